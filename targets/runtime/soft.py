"""Soft tokens: a vision or audio encoder's outputs, already projected to the text decoder's width, which a decoder
graph that takes `soft_tokens` and `soft_mask` (the E-class exporter's, for a multimodal checkpoint; io.soft) reads
in place of the embeddings of the placeholder tokens at their positions. The loop puts the pad token (io.soft's
pad_token_id) at those positions of input_ids, so the embedding and per-layer rows read there (the graph's, or the
rows RowFeeds reads) are the pad's, as transformers reads them; a pass without soft tokens feeds zeros and a mask
of zeros (uint8: 1 at a soft token).
"""

from dataclasses import dataclass
from typing import Any

import numpy as np

SOFT_TOKENS, SOFT_MASK = "soft_tokens", "soft_mask"   # packager/decoder_config.py's SOFT_INPUTS


@dataclass(frozen=True)
class Soft:
    """A prompt's soft tokens: `rows` ([n, hidden]) at the prompt's `positions` ([n], from 0 at the prompt's first
    token). Each pass takes the rows of its own positions (window), so a chunk boundary may fall anywhere."""

    positions: np.ndarray
    rows: np.ndarray

    @classmethod
    def at_tokens(cls, ids: list[int], rows: dict[int, np.ndarray]) -> "Soft":
        """Each placeholder token's rows in order at its positions in `ids` (transformers' masked_scatter): {image
        token id: the image encoder's [n, hidden], audio token id: ...}; as many rows as the token occurs."""
        if not rows:
            raise ValueError("no soft tokens: give a placeholder token's rows, or no Soft at all")
        found = {token: np.flatnonzero(np.asarray(ids) == token) for token in rows}
        for token, at in found.items():
            if len(at) != len(rows[token]):
                raise ValueError(f"token {token} occurs {len(at)} times in the prompt and has {len(rows[token])} "
                                 "soft tokens: one for each placeholder")
        positions = np.concatenate([found[t] for t in rows])
        order = np.argsort(positions, kind="stable")
        stacked = np.concatenate([np.asarray(rows[t], np.float32).reshape(len(found[t]), -1) for t in rows])
        return cls(positions[order], stacked[order])

    def window(self, start: int, n: int, hidden: int) -> tuple[np.ndarray, np.ndarray]:
        """soft_tokens [1, n, hidden] and soft_mask [1, n] of the pass of n tokens at positions start, start + 1 ..."""
        inside = (self.positions >= start) & (self.positions < start + n)
        tokens, mask = np.zeros((1, n, hidden), np.float32), np.zeros((1, n), np.uint8)
        tokens[0, self.positions[inside] - start] = self.rows[inside]
        mask[0, self.positions[inside] - start] = 1
        return tokens, mask


def soft_spec(io: dict[str, Any], inputs: list[str]) -> "tuple[int, int] | None":
    """(hidden, pad token id) where the graph takes soft tokens (io.soft describes them), None where it does not."""
    if SOFT_TOKENS not in inputs:
        return None
    soft = io.get("soft")
    if not soft:
        raise ValueError("this model takes soft tokens and its runtime.io has no `soft` (their width and the pad "
                         "token): the manifest is not packager's")
    return int(soft["hidden"]), int(soft["pad_token_id"])


def soft_feeds(ids: list[int], start: int, soft: "Soft | None",
               spec: "tuple[int, int]") -> tuple[list[int], dict[str, np.ndarray]]:
    """A pass's ids (the pad at its soft tokens' positions) and its soft_tokens and soft_mask (`soft`'s rows at its
    positions, zeros and False elsewhere)."""
    hidden, pad = spec
    if soft is None:
        return ids, {SOFT_TOKENS: np.zeros((1, len(ids), hidden), np.float32),
                     SOFT_MASK: np.zeros((1, len(ids)), np.uint8)}
    tokens, mask = soft.window(start, len(ids), hidden)
    return [pad if m else t for t, m in zip(ids, mask[0].tolist())], {SOFT_TOKENS: tokens, SOFT_MASK: mask}

"""PackedDataset: <s> ... </s> training blocks read from data that `prepare` (packed.py) wrote.

Apart from packed.py because it needs torch, which `prepare` does not (importing torch costs ~1.2 s).
"""

from __future__ import annotations

import numpy as np
import torch

from .packed import TokenStream


class PackedDataset(torch.utils.data.Dataset):
    """<s> ... </s> blocks of seq_len tokens from a prepared split.

    mode="full" (FULL-SENTENCES): block i is the stream's tokens [i*(L-2), (i+1)*(L-2)), so
    blocks cross documents (each document already ends with </s>) and every block but the
    last is exactly seq_len long; the last holds the remainder. Nothing is dropped.
    mode="doc" (DOC-SENTENCES): each document (without its </s>) is cut into pieces of at most
    L-2 tokens; blocks are shorter where a document ends, and the collator pads them.
    """

    def __init__(self, data_dir: str, split: str = "train", seq_len: int = 512, mode: str = "full"):
        if mode not in ("full", "doc"):
            raise ValueError(f"packing mode must be 'full' or 'doc', got {mode!r}")
        if seq_len < 3:
            raise ValueError(f"seq_len must be at least 3, got {seq_len}")
        self.stream = TokenStream(data_dir, split)
        self.bos, self.eos = self.stream.meta["bos_token_id"], self.stream.meta["eos_token_id"]
        self.seq_len, self.mode = seq_len, mode
        body = seq_len - 2
        if mode == "full":
            starts = np.arange(0, len(self.stream), body, dtype=np.int64)
            self.spans = np.stack([starts, np.minimum(starts + body, len(self.stream))], axis=1)
        else:
            ends = self.stream.doc_ends - 1  # drop each document's trailing </s>
            begins = np.concatenate([[0], self.stream.doc_ends[:-1]])
            pieces = -(-(ends - begins) // body)  # ceil
            first = np.repeat(begins, pieces)
            offset = np.arange(pieces.sum()) - np.repeat(np.cumsum(pieces) - pieces, pieces)
            starts = first + offset * body
            self.spans = np.stack([starts, np.minimum(starts + body, np.repeat(ends, pieces))], axis=1)
        if len(self.spans) == 0:
            raise ValueError(f"the {split} split of {data_dir} is empty")

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, i: int) -> torch.Tensor:
        a, b = self.spans[i]
        body = torch.from_numpy(self.stream[int(a) : int(b)].astype(np.int64))
        return torch.cat([torch.tensor([self.bos]), body, torch.tensor([self.eos])])

"""Paged KV blocks: reference counts, prefix caching by hash-chained full blocks, LRU eviction.

A full block is identified by hash((previous block's hash, its token ids)), so equal hashes mean
equal prefixes. Freed blocks keep their hash and stay findable until they are reused; reuse takes
the least recently freed block first, and a sequence's tail blocks are freed before its head so a
shared system prompt outlives the answers that followed it.
"""
from __future__ import annotations

from collections import OrderedDict

from engine.sequence import Sequence


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash: int | None = None
        self.token_ids: tuple[int, ...] | None = None


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_ids: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))  # front: reuse first
        self.cached: dict[int, int] = {}  # block hash -> block id

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_ids)

    def blocks_for(self, num_tokens: int) -> int:
        return (num_tokens + self.block_size - 1) // self.block_size

    def _take_free(self) -> int:
        block_id, _ = self.free_ids.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None and self.cached.get(block.hash) == block_id:
            del self.cached[block.hash]
        block.hash, block.token_ids, block.ref_count = None, None, 1
        return block_id

    def _chunk(self, seq: Sequence, i: int) -> tuple[int, ...]:
        return tuple(seq.token_ids[i * self.block_size:(i + 1) * self.block_size])

    def attach_cached_prefix(self, seq: Sequence) -> int:
        """Give a sequence with no blocks the cached blocks of its longest cached prefix; return the tokens
        covered. At least one token is always left to compute, since its logits are needed."""
        if not self.enable_prefix_caching:
            return 0
        parent = None
        for i in range((seq.num_tokens - 1) // self.block_size):
            chunk = self._chunk(seq, i)
            h = hash((parent, chunk))
            block_id = self.cached.get(h)
            if block_id is None or self.blocks[block_id].token_ids != chunk:
                break
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free_ids[block_id]
            block.ref_count += 1
            seq.block_table.append(block_id)
            seq.block_hashes.append(h)
            parent = h
        seq.num_computed_tokens = seq.num_cached_tokens = len(seq.block_table) * self.block_size
        return seq.num_computed_tokens

    def allocate_slots(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Grow the block table to hold num_new_tokens more tokens; False (and no change) if blocks run out."""
        need = self.blocks_for(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        if need > len(self.free_ids):
            return False
        for _ in range(need):
            seq.block_table.append(self._take_free())
        return True

    def commit_full_blocks(self, seq: Sequence) -> None:
        """Register the blocks that the last step filled so later requests can share them."""
        if not self.enable_prefix_caching:
            return
        parent = seq.block_hashes[-1] if seq.block_hashes else None
        # Only blocks whose tokens are all known (a pending token has no value here yet); their K/V may still
        # be on its way, but every step that could read them runs after the step that writes them.
        for i in range(len(seq.block_hashes), min(seq.num_computed_tokens, seq.num_tokens) // self.block_size):
            chunk = self._chunk(seq, i)
            h = hash((parent, chunk))
            seq.block_hashes.append(h)
            block = self.blocks[seq.block_table[i]]
            if h not in self.cached:  # a twin computed in the same step keeps the first registration
                block.hash, block.token_ids = h, chunk
                self.cached[h] = block.block_id
            parent = h

    def free(self, seq: Sequence) -> None:
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_ids[block_id] = None
                if block.hash is None:  # holds nothing reusable: hand it out first
                    self.free_ids.move_to_end(block_id, last=False)
        seq.block_table.clear()
        seq.block_hashes.clear()
        seq.num_computed_tokens = 0

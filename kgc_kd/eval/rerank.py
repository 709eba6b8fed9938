"""SimKGC graph re-ranking: boost candidates near the query entity in the train graph.

Text encoders alone ignore graph structure; SimKGC adds a constant bonus to every entity within ``hops``
hops of the query head (the head itself included) in the undirected training graph, which mostly helps
WN18RR. As in SimKGC, a neighbourhood larger than ``max_nodes`` gives no bonus at all (hub entities would
otherwise boost a large part of the graph), and each (query, entity) pair gets the bonus once.

SimKGC runs a Python breadth-first search per query; here every head of a batch is searched at once, on
the evaluation device, with tensor operations only:

- `NeighbourGraph` lays the graph out once: nodes grouped by degree, each group's neighbour lists padded to
  one width, so a hop is a few `index_select`s and bitwise ORs, not a loop over nodes;
- the search is bit-parallel: node n holds one bit per head (64 heads per int64 word), and one hop ORs
  each node's word row with its neighbours' rows, so a hop costs (edges x heads / 64) word operations;
- `Neighbourhoods` keeps the result per head as a bitset over entities (entity 8k + r is bit r of byte k),
  H x E / 8 bytes (rows padded to whole int64 words); a chunk of queries unpacks its rows, by table
  look-up, into the (chunk, E) bonus it adds to the scores.

Neighbourhoods depend only on the train graph, the hops and the heads, so a run builds them once for its
validation and test heads (`KGDataModule.rerank_neighbourhoods`) and every stage reuses them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from .memory_plan import search_batch_heads

__all__ = ["NeighbourGraph", "Neighbourhoods", "apply_rerank_", "DEFAULT_MAX_NODES"]

DEFAULT_MAX_NODES = 100_000  # SimKGC's max_nodes
Adjacency = Sequence[Sequence[int]] | Mapping[int, Iterable[int]]

# exact-width groups for the common small degrees, then powers of two (padding at most doubles the work)
_EXACT_DEGREES = 4


def _degree_class(deg: Tensor) -> Tensor:
    """The padded neighbour-list width each node's group uses (0 for isolated nodes)."""
    pow2 = torch.ones_like(deg) << torch.ceil(torch.log2(deg.clamp(min=1).double())).long()
    return torch.where(deg <= _EXACT_DEGREES, deg, pow2)


# Transpose of the 8 x 8 bit matrix held in each int64 (bit 8r + c <-> bit 8c + r), Hacker's Delight 7-3.
# Right shifts are arithmetic on int64, but each mask clears the bits a sign extension could reach.
_T8 = ((7, 0x00AA00AA00AA00AA), (14, 0x0000CCCC0000CCCC), (28, 0x00000000F0F0F0F0))


def _transpose8_(x: Tensor) -> Tensor:
    tmp = torch.empty_like(x)
    for shift, mask in _T8:  # t = (x ^ (x >> s)) & m; x ^= t ^ (t << s), without temporaries
        torch.bitwise_right_shift(x, shift, out=tmp)
        tmp ^= x
        tmp &= mask
        x ^= tmp
        tmp <<= shift
        x ^= tmp
    return x


def _bits_by_head(words: Tensor, num_heads: int) -> Tensor:
    """(N, W) int64, bit j of word w of row n = head 64w + j reaches entity n  ->  (num_heads, 8 * ceil(N/64))
    uint8, bit r of byte k of row h = head h reaches entity 8k + r (zero past N, so each row is a whole
    number of int64 words). A bit-matrix transpose in 8 x 8 blocks."""
    n, w = words.shape
    n8 = -(-n // 64) * 8
    if n8 * 8 != n:
        words = torch.cat([words, words.new_zeros(n8 * 8 - n, w)])
    # [entity block k, entity r in the block, head byte j]: one int64 per (head byte, entity block) holds an
    # 8 x 8 block with rows = entities and bits = heads; transposed, rows = heads and bits = entities.
    blocks = words.view(torch.uint8).view(n8, 8, w * 8).permute(2, 0, 1).contiguous()
    blocks = _transpose8_(blocks.view(torch.int64).view(w * 8, n8))
    out = blocks.view(torch.uint8).view(w * 8, n8, 8).permute(0, 2, 1).reshape(w * 64, n8)
    return out[:num_heads]


def _popcount_rows(bits: Tensor) -> Tensor:
    """Set bits per row of a uint8 matrix whose rows are whole int64 words (SWAR popcount per word; right
    shifts are arithmetic on int64, so each step masks, and after the third step every word is >= 0)."""
    x = bits.view(torch.int64)
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    x = x + (x >> 8)
    x = x + (x >> 16)
    x = x + (x >> 32)
    return (x & 0x7F).sum(dim=1)


_BIT_TABLES: dict[tuple[torch.device, torch.dtype], Tensor] = {}


def _bit_table(device: torch.device, dtype: torch.dtype) -> Tensor:
    """(256, 8): row b holds the 8 bits of byte value b (bit r in column r) as 0/1 of `dtype`."""
    key = (device, dtype)
    if key not in _BIT_TABLES:
        b = torch.arange(256)
        _BIT_TABLES[key] = ((b.unsqueeze(1) >> torch.arange(8)) & 1).to(device=device, dtype=dtype)
    return _BIT_TABLES[key]


class NeighbourGraph:
    """The undirected train graph, laid out for a bit-parallel breadth-first search from many heads.

    Nodes are renumbered so that nodes of one degree class are contiguous (`position[entity]`); group g
    covers positions [lo, hi) and lists their neighbours' positions, padded with the all-zero row
    `num_entities`, as a width x (hi - lo) index flattened slot by slot.
    """

    def __init__(self, num_entities: int, src: Tensor, dst: Tensor, device: torch.device | str | None = None):
        """Directed edge lists `src -> dst`; both directions of every edge must be present (see
        `from_triples`). Self-loops and duplicate edges are dropped: they never change a neighbourhood."""
        device = torch.device(device) if device is not None else src.device
        n = int(num_entities)
        src, dst = src.long().reshape(-1).cpu(), dst.long().reshape(-1).cpu()
        if len(src) and (int(torch.minimum(src, dst).min()) < 0 or int(torch.maximum(src, dst).max()) >= n):
            raise ValueError(f"edge endpoints must be entity ids in [0, {n})")
        keep = src != dst
        codes = torch.unique(src[keep] * n + dst[keep])  # sorted by source, then target; duplicates dropped
        src, dst = codes // n, codes % n
        deg = torch.bincount(src, minlength=n)
        start = deg.cumsum(0) - deg
        width = _degree_class(deg)
        order = torch.argsort(width, stable=True)  # position -> entity
        position = torch.empty(n, dtype=torch.long)
        position[order] = torch.arange(n)
        self.num_entities = n
        self.num_edges = len(codes)  # directed: twice the undirected edges
        self.position = position.to(device)
        self.groups: list[tuple[int, int, int, Tensor]] = []  # (lo, hi, width, flat neighbour positions)
        sorted_width = width[order]
        for w in torch.unique(sorted_width).tolist():
            if w == 0:
                continue
            lo = int(torch.searchsorted(sorted_width, w))
            hi = int(torch.searchsorted(sorted_width, w, right=True))
            nodes = order[lo:hi]
            j = torch.arange(w)
            slot = start[nodes].unsqueeze(1) + j
            real = j < deg[nodes].unsqueeze(1)
            nbr = torch.where(real, position[dst[slot.clamp(max=max(len(dst) - 1, 0))]], n)
            # a group gathers at most N + 1 word rows at once (a larger one is split by nodes), so the search's
            # gather buffer is never larger than its word matrices, whatever the degree distribution
            step = max(1, (n + 1) // w)
            for a in range(0, hi - lo, step):
                b = min(a + step, hi - lo)
                # slot-major (the j-th neighbour of every node, then the (j+1)-th): folds OR contiguous blocks
                self.groups.append((lo + a, lo + b, w, nbr[a:b].T.reshape(-1).to(device)))
        self.device = device

    @classmethod
    def from_triples(cls, triples: Tensor | Sequence[Sequence[int]], num_entities: int,
                     device: torch.device | str | None = None) -> NeighbourGraph:
        """The undirected graph of (h, r, t) rows: pass train triples only (no leakage)."""
        t = torch.as_tensor(triples, dtype=torch.long).reshape(-1, 3)
        return cls(num_entities, torch.cat([t[:, 0], t[:, 2]]), torch.cat([t[:, 2], t[:, 0]]), device)

    @classmethod
    def from_adjacency(cls, adjacency: Adjacency, num_entities: int | None = None,
                       device: torch.device | str | None = None) -> NeighbourGraph:
        """From neighbour lists (a list indexed by entity, or a mapping entity -> neighbours), made undirected."""
        items = adjacency.items() if isinstance(adjacency, Mapping) else enumerate(adjacency)
        src: list[int] = []
        dst: list[int] = []
        for node, nbrs in items:
            for nb in nbrs:
                src.append(int(node))
                dst.append(int(nb))
        if num_entities is None:
            listed = 0 if isinstance(adjacency, Mapping) else len(adjacency)
            num_entities = max([listed, *(x + 1 for x in src + dst)])
        s, d = torch.tensor(src, dtype=torch.long), torch.tensor(dst, dtype=torch.long)
        return cls(num_entities, torch.cat([s, d]), torch.cat([d, s]), device)

    def to(self, device: torch.device | str) -> NeighbourGraph:
        device = torch.device(device)
        if device == self.device:
            return self
        moved = object.__new__(NeighbourGraph)
        moved.__dict__.update(self.__dict__)
        moved.position = self.position.to(device)
        moved.groups = [(lo, hi, w, idx.to(device)) for lo, hi, w, idx in self.groups]
        moved.device = device
        return moved

    def _reach(self, positions: Tensor, hops: int) -> Tensor:
        """(N + 1, ceil(H / 64)) int64 words by node position: bit j of word w = head 64w + j reaches it.

        One hop: each node ORs its row with its neighbours' rows of the previous hop. A group gathers its
        neighbour rows ((hi - lo) x width x W words) and folds them pairwise in place (torch has no OR
        reduction); two word matrices alternate, so a hop allocates nothing."""
        n, num_heads = self.num_entities, len(positions)
        width_words = -(-num_heads // 64)
        words = torch.zeros(n + 1, width_words, dtype=torch.int64, device=self.device)  # row n: the padding
        i = torch.arange(num_heads, device=self.device)
        words.index_put_((positions, i // 64), torch.ones_like(i) << (i % 64), accumulate=True)
        if not self.groups or hops == 0:
            return words
        nxt = torch.zeros_like(words)
        isolated = self.groups[0][0]  # positions [0, first group) have no edges
        gathered = torch.empty(max(len(g[3]) for g in self.groups), width_words, dtype=torch.int64,
                               device=self.device)
        for _ in range(hops):
            nxt[:isolated] = words[:isolated]
            for lo, hi, w, nbr in self.groups:
                t = torch.index_select(words, 0, nbr, out=gathered[: len(nbr)]).view(w, hi - lo, width_words)
                while w > 2:
                    half = w // 2
                    if w % 2:
                        t[0] |= t[w - 1]
                    t[:half] |= t[half:2 * half]
                    t, w = t[:half], half
                out = nxt[lo:hi]
                torch.bitwise_or(t[0], t[1] if w == 2 else words[lo:hi], out=out)
                if w == 2:
                    out |= words[lo:hi]
            words, nxt = nxt, words
        return words

    def neighbourhoods(self, heads: Tensor | Sequence[int], hops: int, max_nodes: int = DEFAULT_MAX_NODES, *,
                       batch_heads: int = 8192, memory_budget: int | None = None) -> Neighbourhoods:
        """Entities within `hops` hops of each distinct head (itself included); none where there are more
        than `max_nodes` (SimKGC's cut-off). Heads are searched `batch_heads` at a time, fewer where
        `memory_budget` (bytes) holds fewer (`memory_plan.search_batch_heads`): the search holds two
        (entities x batch_heads / 8)-byte word matrices and a gather of at most as many, the conversion to
        per-head rows up to six. The result holds heads x entities / 8 bytes."""
        if hops < 0:
            raise ValueError(f"hops must be >= 0, got {hops}")
        batch_heads = search_batch_heads(self.num_entities, batch_heads=batch_heads, memory_budget=memory_budget)
        heads = torch.unique(torch.as_tensor(heads, dtype=torch.long).reshape(-1).to(self.device))
        n = self.num_entities
        if len(heads) and (int(heads.min()) < 0 or int(heads.max()) >= n):
            raise ValueError(f"heads must be entity ids in [0, {n})")
        bits = torch.zeros(len(heads), -(-n // 64) * 8, dtype=torch.uint8, device=self.device)
        order = self.position  # entity -> position; rows back in entity order below
        for start in range(0, len(heads), batch_heads):
            part = heads[start:start + batch_heads]
            words = self._reach(order[part], hops)
            bits[start:start + len(part)] = _bits_by_head(words[order], len(part))
        sizes = _popcount_rows(bits)
        # SimKGC stops as soon as the set outgrows max_nodes, which needs a second member: a lone head
        # always keeps itself
        cut = sizes > max(int(max_nodes), 1)
        bits[cut] = 0
        sizes = sizes.masked_fill(cut, 0)
        return Neighbourhoods(heads, bits, sizes, n, hops, int(max_nodes), graph=self)


class Neighbourhoods:
    """The k-hop neighbourhood of each of a set of heads, as bitsets over entities (see module docstring)."""

    def __init__(self, heads: Tensor, bits: Tensor, sizes: Tensor, num_entities: int, hops: int, max_nodes: int,
                 graph: NeighbourGraph | None = None):
        self.heads = heads  # (H,) sorted distinct entity ids
        self.bits = bits  # (H, 8 * ceil(E / 64)) uint8, all zero where the neighbourhood was cut off
        self.sizes = sizes  # (H,) members per head (0 where cut off)
        self.num_entities = num_entities
        self.hops = hops
        self.max_nodes = max_nodes
        self.graph = graph  # to extend to heads not searched yet (see `covering`)
        self._slot = torch.full((num_entities,), -1, dtype=torch.long, device=heads.device)
        self._slot[heads] = torch.arange(len(heads), device=heads.device)

    def __len__(self) -> int:
        return len(self.heads)

    def __repr__(self) -> str:
        return (f"Neighbourhoods({len(self)} heads, {self.hops} hops, max_nodes {self.max_nodes}, "
                f"{self.num_entities} entities, {self.bits.device})")

    @property
    def device(self) -> torch.device:
        return self.bits.device

    @property
    def unpacked_width(self) -> int:
        """Entities per unpacked row: E rounded up to whole int64 words of bits (the rest is never set)."""
        return self.bits.shape[1] * 8

    def slots(self, heads: Tensor) -> Tensor:
        """Row of each head; -1 where the head was not searched."""
        return self._slot[torch.as_tensor(heads, dtype=torch.long, device=self.device).reshape(-1)]

    def covering(self, heads: Tensor) -> Neighbourhoods:
        """Self if every head was searched, else a copy that adds the missing heads (searched now)."""
        heads = torch.as_tensor(heads, dtype=torch.long, device=self.device).reshape(-1)
        missing = torch.unique(heads[self.slots(heads) < 0])
        if len(missing) == 0:
            return self
        if self.graph is None:
            raise ValueError(f"{len(missing)} heads (e.g. entity {int(missing[0])}) have no neighbourhood here "
                             "and there is no graph to search them")
        extra = self.graph.neighbourhoods(missing, self.hops, self.max_nodes)
        heads = torch.cat([self.heads, extra.heads])
        order = torch.argsort(heads)
        return Neighbourhoods(heads[order], torch.cat([self.bits, extra.bits])[order],
                              torch.cat([self.sizes, extra.sizes])[order], self.num_entities, self.hops,
                              self.max_nodes, graph=self.graph)

    def to(self, device: torch.device | str) -> Neighbourhoods:
        device = torch.device(device)
        if device == self.device:
            return self
        graph = self.graph.to(device) if self.graph is not None else None
        return Neighbourhoods(self.heads.to(device), self.bits.to(device), self.sizes.to(device),
                              self.num_entities, self.hops, self.max_nodes, graph=graph)

    def checked_slots(self, heads: Tensor) -> Tensor:
        """Row of each head; KeyError naming a head that was not searched."""
        slots = self.slots(heads)
        if bool((slots < 0).any()):
            missing = torch.as_tensor(heads, device=self.device).reshape(-1)[slots < 0]
            raise KeyError(f"entity {int(missing[0])} has no neighbourhood here (use covering(heads) first)")
        return slots

    def packed(self, heads: Tensor) -> Tensor:
        """(Q, 8 * ceil(E / 64)) uint8: the bitset of each head's neighbourhood."""
        return self.bits[self.checked_slots(heads)]

    def table(self, value: float = 1.0, dtype: torch.dtype = torch.bool) -> Tensor:
        """(256, 8): row b holds `value` (cast to `dtype`) at the set bits of byte value b, else 0."""
        table = _bit_table(self.device, dtype)
        return table * value if value != 1.0 else table

    def unpack(self, slots: Tensor, table: Tensor, out: Tensor | None = None) -> Tensor:
        """(Q, E) of `table`'s values for the rows `slots`: one table look-up per byte (8 entities). `out`,
        a contiguous tensor of the table's dtype with at least Q x `unpacked_width` elements, receives them
        instead of a new block."""
        packed = torch.index_select(self.bits, 0, slots).long().view(-1)
        if out is not None:
            if out.numel() < packed.numel() * 8 or out.dtype != table.dtype or not out.is_contiguous():
                raise ValueError(f"out must be a contiguous {table.dtype} tensor of at least "
                                 f"{packed.numel() * 8} elements")
            out = out.view(-1)[: packed.numel() * 8].view(-1, 8)
        block = torch.index_select(table, 0, packed, out=out) if out is not None else table[packed]
        return block.view(len(slots), -1)[:, : self.num_entities]

    def mask(self, heads: Tensor, *, value: float = 1.0, dtype: torch.dtype = torch.bool,
             out: Tensor | None = None) -> Tensor:
        """(Q, E): `value` where the entity is in head[i]'s neighbourhood, else 0 (True/False for bool);
        `out` as for `unpack`."""
        return self.unpack(self.checked_slots(heads), self.table(value, dtype), out)

    def members(self, head: int) -> list[int]:
        """Sorted entity ids within reach of `head` ([] where cut off): the readable view, for tests."""
        return self.mask(torch.tensor([int(head)]))[0].nonzero().flatten().tolist()


def apply_rerank_(scores: Tensor, heads: Tensor, neighbourhoods: Neighbourhoods | None, weight: float, *,
                  workspace: Tensor | None = None) -> Tensor:
    """Add ``weight`` in place to ``scores[i, n]`` for every n in the neighbourhood of ``heads[i]``.

    Each (query, entity) gets the bonus once, and ``scores[i, n] + weight`` is rounded exactly as
    SimKGC's ``index_add_`` rounds it (elsewhere ``+ 0`` leaves the score unchanged). ``weight == 0`` or
    no neighbourhoods is a no-op. ``workspace`` (a contiguous tensor of the scores' dtype on their device,
    at least Q x ``neighbourhoods.unpacked_width`` elements) holds the unpacked bonus; without it a block is
    allocated.
    """
    if weight == 0 or neighbourhoods is None:
        return scores
    heads = torch.as_tensor(heads).reshape(-1)
    if heads.shape[0] != scores.shape[0]:
        raise ValueError(f"heads has {heads.shape[0]} entries for {scores.shape[0]} score rows")
    if scores.shape[1] != neighbourhoods.num_entities:
        raise ValueError(f"scores cover {scores.shape[1]} entities, the neighbourhoods "
                         f"{neighbourhoods.num_entities}")
    if scores.device != neighbourhoods.device:
        neighbourhoods = neighbourhoods.to(scores.device)
    # the table holds weight cast to the scores' dtype, as SimKGC's bonus tensor is
    bonus = neighbourhoods.mask(heads, value=float(weight), dtype=scores.dtype, out=workspace)
    return scores.add_(bonus)

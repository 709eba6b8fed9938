"""What every stage module shares: a bi-encoder `net`, full filtered ranking as validation/test, AdamW.

Validation is the real metric (filtered MRR over all entities), not SimKGC's in-batch accuracy, so
ModelCheckpoint on `val/mrr` keeps the model a user would report. Evaluation runs two loaders in order:
all entities first, then the queries, ranked at epoch end.

Evaluation memory is bounded by the plan of `kgc_kd.eval.memory_plan`: the entity vectors go, batch by
batch, straight into one (E, D) matrix allocated at the first batch, in the run's dtype (bf16 for bf16 runs,
fp16 for 16-bit ones, else float32; no list of batches, no concatenated or float32 copy), and the ranking
scores query chunks sized by `eval.memory_budget_gb` against it in float32. Under DDP each rank encodes its
share of the entities and every batch is all-gathered into each rank's matrix as it comes (so every rank
holds the whole matrix plus one gathered batch, never the list of every rank's batches); each rank keeps
only its own query vectors, ranks them, and only the ranks (and top-k) are gathered, with the sampler's
padding copies dropped by query index, so the metrics are those of one process.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor
from transformers import get_linear_schedule_with_warmup

from kgc_kd.data.negatives import false_negative_mask, in_batch_mask
from kgc_kd.runtime.devices import fused_adamw
from kgc_kd.eval import Ranks, RankingOutput, direction_metrics, evaluate_queries
from kgc_kd.eval.memory_plan import budget_bytes, entity_dtype, evaluation_memory_plan
from kgc_kd.models.biencoder import BiEncoder
from kgc_kd.models.prebatch import PreBatchBuffer


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the stage, the step and the loss terms at fault."""


class BiEncoderModule(L.LightningModule):
    net: BiEncoder
    stage_name = "teacher"

    def __init__(self) -> None:
        super().__init__()
        self._eval_store: dict[str, Any] = {}
        self.last_eval: dict[str, Any] = {}

    # ---- data-parallel helpers ----------------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def gather_rows(self, x: Tensor, *, grads: bool = False) -> Tensor:
        """Concatenate every rank's rows (rank order). With `grads`, gradients flow back to each rank's
        own rows, so a loss on the global batch trains like one process seeing the whole batch."""
        if self.world_size == 1:
            return x
        return self.all_gather(x, sync_grads=grads).reshape(-1, *x.shape[1:])

    def global_batch(self, vectors: dict[str, Tensor], batch: dict) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor]:
        """In-batch negatives over the GLOBAL batch (as SimKGC's DataParallel had them): vectors gathered with
        gradients, the false-negative masks rebuilt on the gathered triples."""
        if self.world_size == 1:
            return vectors, batch["triples"], batch["fn_mask"], batch["self_mask"]
        vectors = {k: self.gather_rows(v, grads=v.requires_grad) for k, v in vectors.items()}
        triples = self.gather_rows(batch["triples"])
        fn_mask, self_mask = in_batch_mask(triples, self.trainer.datamodule.known_train)
        return vectors, triples, fn_mask, self_mask

    # ---- pre-batch negatives ----------------------------------------------------------------------------
    @staticmethod
    def prebatch_buffer(model: dict) -> PreBatchBuffer | None:
        """SimKGC's pre-batch buffer when `model.pre_batch` > 0 (sized by the first global batch pushed)."""
        k = int(model.get("pre_batch", 0) or 0)
        return PreBatchBuffer(k) if k > 0 else None

    def prebatch_mask(self, buffer: PreBatchBuffer, triples: Tensor) -> Tensor:
        """(B, k B) True where a buffered entity is a known answer of the global batch's query, or the slot is
        still empty; computed on the step's device against the keys cached there."""
        known = self.trainer.datamodule.known_train
        return (false_negative_mask(triples[:, :2], triples[:, 2], buffer.triples[:, 2].clamp(min=0), known)
                | ~buffer.filled[None, :])

    # ---- numerical faults ---------------------------------------------------------------------------------
    def check_finite(self, loss: Tensor, terms: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Stop when the loss is NaN or infinite, with the weights of the last good step; returns the loss to
        back-propagate (the training steps return it).

        Every step (`optim.check_finite_every_n_steps` = 1; unset means 1 without CUDA): the loss is read on the
        host and a non-finite one raises before backward(), so the weights (and the last checkpoint on disk)
        are the last good ones. On the CPU this read costs nothing.

        Every N steps (unset on CUDA: N = trainer.log_every_n_steps): reading the loss each step would make the
        host wait for the GPU every step. Instead a device-side flag records the first non-finite loss (its
        step and term values too), and from that step on every update is skipped ON THE DEVICE: a fused
        optimizer (AdamW on CUDA) gets the flag as its `found_inf`, the tensor by which GradScaler skips steps
        (parameters, moments and step count untouched, weight decay included); under a GradScaler (16-mixed)
        the loss is multiplied by NaN, so the scaler finds non-finite gradients and skips the step. The flag
        is read every N steps and at each epoch's end, and the error names the first bad step. So the weights
        are those before the first bad step, as with the per-step check; what differs: up to N - 1 further
        batches ran forward/backward, the learning-rate schedule and `global_step` advanced over the skipped
        steps, and a checkpoint written in between holds the good weights with that step count. Where no
        device-side skip exists (a non-fused optimizer without a scaler) the check runs every step.
        Under DDP the step's flag is all-reduced on the device (every rank skips the same steps) and every
        rank stops together (`reduce_boolean_decision`)."""
        every = self._finite_interval()
        if every == 1:
            finite = bool(torch.isfinite(loss.detach()))
            if self.world_size > 1:  # every rank must stop together, or the others hang in the next all-reduce
                finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
            if not finite:
                values = [float(loss.detach())] + [float(v.detach().float().mean()) for v in terms.values()]
                self._raise_non_finite(values, list(terms), self.global_step, self.current_epoch, batch_idx,
                                       "Training stopped before the update")
            return loss
        st = self._finite_state
        bad = (~torch.isfinite(loss.detach())).float()
        if self.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)  # queued, not waited for
        newly = (bad > 0) & (st["flag"] == 0)
        index = len(st["steps"])
        st["steps"].append((self.global_step, self.current_epoch, batch_idx))
        values = torch.stack([loss.detach().float()] + [v.detach().float().mean() for v in terms.values()])
        if st["values"] is None or st["values"].shape != values.shape:
            st["values"] = torch.full_like(values, float("nan"))
        st["first"].copy_(torch.where(newly, index, st["first"]))
        st["values"].copy_(torch.where(newly, values, st["values"]))
        torch.maximum(st["flag"], bad, out=st["flag"])
        st["names"] = list(terms)
        if st["skip"] == "scaler":  # NaN gradients from the first bad step on: the scaler skips those steps
            loss = loss * torch.where(st["flag"] > 0, float("nan"), 1.0)
        if len(st["steps"]) >= every:
            self._read_finite_flag()
        return loss

    def on_train_epoch_end(self) -> None:
        if self._finite_state is not None and self._finite_state["steps"]:
            self._read_finite_flag()  # a bad step in the epoch's last N - 1 must not end the stage silently

    _finite_state: dict | None = None
    _finite_every: tuple | None = None

    def _finite_interval(self) -> int:
        """N, resolved once per fit (and the device-side state when N > 1); see `check_finite`."""
        key = (id(self.trainer), self.device)
        if self._finite_every is not None and self._finite_every[0] == key:
            return self._finite_every[1]
        n = (self.hparams.get("optim") or {}).get("check_finite_every_n_steps")
        if n is None:
            n = max(1, int(self.trainer.log_every_n_steps)) if self.device.type == "cuda" else 1
        n, skip = max(1, int(n)), None
        if n > 1:
            optimizers = list(self.trainer.optimizers)
            if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
                skip = "scaler"
            elif optimizers and all(o.defaults.get("fused") for o in optimizers):
                skip = "found_inf"
            else:
                n = 1  # no way to skip an update without reading the flag: check every step
        self._finite_every = (key, n)
        self._finite_state = None
        if n > 1:
            flag = torch.zeros((), dtype=torch.float32, device=self.device)
            self._finite_state = {"flag": flag, "first": torch.full((), -1, dtype=torch.long, device=self.device),
                                  "values": None, "steps": [], "names": [], "skip": skip}
            if skip == "found_inf":
                for o in self.trainer.optimizers:
                    o.found_inf = flag  # read by the fused kernel: a nonzero flag skips the whole update
        return n

    def _read_finite_flag(self) -> None:
        """The N-step read: one host sync; raises (every rank together) if any step since the last read was bad."""
        st = self._finite_state
        finite = not bool(st["flag"] > 0)
        if self.world_size > 1:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            st["steps"].clear()
            return
        first = int(st["first"])
        step, epoch, batch = st["steps"][first] if 0 <= first < len(st["steps"]) else (self.global_step, self.current_epoch, -1)
        values = st["values"].tolist() if st["values"] is not None else [float("nan")]
        skipped = len(st["steps"]) - max(first, 0)
        self._raise_non_finite(values, st["names"], step, epoch, batch,
                               f"Training stopped at the check every {self._finite_every[1]} steps; the update of "
                               f"that step and of the {skipped - 1} after it were skipped on the device")

    def _raise_non_finite(self, values: list[float], names: list[str], step: int, epoch: int, batch_idx: int,
                          stopped: str) -> None:
        weights = getattr(self, "weights", {"ce": 1.0})
        bad = [f"{n}={v:g} (weight {weights.get(n, 0.0):g})" for n, v in zip(names, values[1:])
               if not torch.isfinite(torch.tensor(v))]
        ckpt = self.trainer.checkpoint_callback
        last = getattr(ckpt, "last_model_path", "") if ckpt is not None else ""
        raise NonFiniteLossError(
            f"stage {self.stage_name}: loss is {values[0]:g} at step {step} "
            f"(epoch {epoch}, batch {batch_idx}); non-finite term(s): {', '.join(bad) or 'none on this rank'}. "
            f"{stopped}; last good checkpoint: {last or 'none yet (first epoch)'}. "
            "Try a lower optim.lr, a smaller trainer.gradient_clip_val or trainer.precision=32-true; "
            "rerunning the same command resumes from the last checkpoint."
        )

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip here, not in Lightning's precision plugin, and log the total gradient norm (before clipping) at
        the logging interval.

        Lightning's `MixedPrecision.clip_gradients` refuses any optimizer that unscales inside its step (every
        fused one) whenever `clip_val > 0`, scaler or not: with the default `gradient_clip_val` every bf16 run on
        a GPU, where AdamW is fused, stopped at its first step. bf16 has no scaler, so its gradients are true
        gradients here and clipping them is exact. Under `16-mixed` the plugin unscales before this hook only
        for optimizers that do not unscale themselves; for a fused one the gradients arrive scaled, so the
        scaler unscales them first (its step then skips its own unscaling and still skips inf/NaN steps).
        The fused kernel is kept in every precision."""
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        clip = float(gradient_clip_val or 0.0)
        log_norm = self.trainer.global_step % max(1, self.trainer.log_every_n_steps) == 0
        if not params or (clip <= 0 and not log_norm):
            return
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
            scaler.unscale_(optimizer)
        grads = [p.grad for p in params]
        if clip > 0 and str(gradient_clip_algorithm) == "value":
            norm = torch.nn.utils.get_total_norm(grads) if log_norm else None
            torch.nn.utils.clip_grad_value_(params, clip)
        elif clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, clip)  # returns the norm before clipping
        else:
            norm = torch.nn.utils.get_total_norm(grads)
        if log_norm:
            self.log("train/grad_norm", norm.float(), batch_size=1)

    def trainable_modules(self) -> list[torch.nn.Module]:
        """Modules the optimizer updates (subclasses add e.g. a feature generator)."""
        return [self.net]

    # ---- evaluation -------------------------------------------------------------------------------------
    @property
    def eval_dtype(self) -> torch.dtype:
        """The dtype evaluation stores vectors in: bf16 / fp16 for such runs, else float32."""
        return entity_dtype(self.trainer.precision if self._trainer is not None else None)

    def _eval_step(self, batch: dict, dataloader_idx: int) -> None:
        if dataloader_idx == 0:
            self._store_entities(batch["entity_ids"], self.net.encode_entity(batch["entity"]))
        else:
            self._eval_store.setdefault("triples", []).append(batch["triples"])
            vecs = self.net.encode_query(batch["hr"]).detach().to(self.eval_dtype)
            self._eval_store.setdefault("query_vecs", []).append(vecs)
            if "query_index" in batch:
                self._eval_store.setdefault("query_index", []).append(batch["query_index"])

    def _store_entities(self, ids: Tensor, vecs: Tensor) -> None:
        """Write a batch of entity vectors into the (E, D) matrix (allocated at the first batch; rows never
        encoded stay zero). Under DDP every rank's batch is gathered and written on every rank: the
        sampler gives all ranks the same number of equal-sized batches, so each step's collective matches."""
        vecs = vecs.detach().to(self.eval_dtype)
        if self.world_size > 1:
            ids, vecs = self.gather_rows(ids.to(vecs.device)), self.gather_rows(vecs)
        matrix = self._eval_store.get("entity_matrix")
        if matrix is None:
            matrix = vecs.new_zeros(self.trainer.datamodule.kg.num_entities, vecs.shape[1])
            self._eval_store["entity_matrix"] = matrix
        matrix[ids.to(matrix.device)] = vecs

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def on_validation_epoch_start(self) -> None:
        self._eval_store = {}

    def on_test_epoch_start(self) -> None:
        self._eval_store = {}

    def _finish_eval(self, prefix: str) -> dict[str, float]:
        store, self._eval_store = self._eval_store, {}
        if self.trainer.sanity_checking or "query_vecs" not in store:
            return {}
        kg = self.trainer.datamodule.kg
        entity_vecs = store.pop("entity_matrix")
        triples = torch.cat(store["triples"])
        query_vecs = torch.cat(store["query_vecs"])  # this rank's own share only
        index = torch.cat(store["query_index"]).cpu() if "query_index" in store else None
        del store
        ev = self.hparams.eval
        topk = ev["topk"] if prefix == "test" else 0
        rerank = bool(ev["rerank_weight"]) and ev["rerank_hops"] > 0
        budget = budget_bytes(ev.get("memory_budget_gb"))  # absent (a hand-made eval dict): no budget
        h, r = triples[:, 0].cpu(), triples[:, 1].cpu()
        plan = evaluation_memory_plan(
            kg.num_entities, entity_vecs.shape[1], len(query_vecs) * self.world_size,
            dtype_bytes=entity_vecs.element_size(), chunk_size=ev["chunk_size"], memory_budget=budget,
            rerank=rerank, topk=topk, world_size=self.world_size,
            known_pairs=int(kg.filter_index.lookup(h, r).count.sum()))
        if len(triples):
            _, output = evaluate_queries(
                query_vecs, entity_vecs, triples, kg.num_relations, kg.filter_index,
                # searched once per run for every validation and test head, on this device (datamodule cache)
                adjacency=(self.trainer.datamodule.rerank_neighbourhoods(ev["rerank_hops"], entity_vecs.device,
                                                                         memory_budget=budget)
                           if rerank else None),
                rerank_hops=ev["rerank_hops"], rerank_weight=ev["rerank_weight"], chunk_size=ev["chunk_size"],
                memory_budget=budget, topk=topk,
            )
        else:  # a rank without queries (more ranks than queries) only takes part in the gathers
            empty, k = torch.empty(0), min(topk, kg.num_entities)
            output = RankingOutput(Ranks(empty, empty, empty), torch.empty(0, k, dtype=torch.long) if topk else None,
                                   torch.empty(0, k) if topk else None)
        del entity_vecs, query_vecs
        triples = triples.cpu()
        if self.world_size > 1:  # every rank's share, in rank order: ranks and top-k only, never vectors
            # every tensor below has this rank's query count as its length: gathered once
            counts = self.all_gather(torch.tensor([len(triples)], device=self.device)).reshape(-1).tolist()
            triples, index = self._gather_padded(triples, -1, counts), self._gather_padded(index, -1, counts)
            r = output.ranks
            output = RankingOutput(Ranks(*(self._gather_padded(t, float("nan"), counts)
                                           for t in (r.optimistic, r.pessimistic, r.realistic))),
                                   self._gather_padded(output.topk_ids, -1, counts),
                                   self._gather_padded(output.topk_scores, float("-inf"), counts))
        if index is not None:  # each query once, in query order (DDP: the sampler pads shares with repeats)
            order = torch.argsort(index, stable=True)
            first = torch.ones_like(index, dtype=torch.bool)
            first[1:] = index[order][1:] != index[order][:-1]
            keep = order[first]
            triples = triples[keep]
            output = RankingOutput(output.ranks.select(keep),
                                   None if output.topk_ids is None else output.topk_ids[keep],
                                   None if output.topk_scores is None else output.topk_scores[keep])
        metrics = direction_metrics(output.ranks, triples[:, 1] >= kg.num_relations)
        self.last_eval[prefix] = {"metrics": metrics, "triples": triples, "output": output, "memory_plan": plan}
        for k, v in metrics.items():
            if not (k.endswith("count") or k == "num_queries"):
                self.log(f"{prefix}/{k}", float(v), prog_bar=k == "mrr", batch_size=1)
        return metrics

    def _gather_padded(self, x: Tensor | None, fill: float, counts: list[int]) -> Tensor | None:
        """Every rank's rows of `x` in rank order, on CPU (`counts`: each rank's row count); shares of
        unequal length are padded with `fill` for the collective and trimmed after."""
        if x is None:
            return None
        pad = x.new_full((max(counts) - len(x), *x.shape[1:]), fill)
        rows = self.all_gather(torch.cat([x, pad]).to(self.device)).cpu()
        return torch.cat([rows[rank, :count] for rank, count in enumerate(counts)])

    def on_validation_epoch_end(self) -> None:
        self._finish_eval("val")

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test")

    # ---- optimisation -----------------------------------------------------------------------------------
    def configure_optimizers(self):
        o = self.hparams.optim
        named = [(n, p) for m in self.trainable_modules() for n, p in m.named_parameters() if p.requires_grad]
        if o["no_decay_norm_bias"]:
            groups = [{"params": [p for _, p in named if p.ndim >= 2], "weight_decay": o["weight_decay"]},
                      {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0}]
        else:
            groups = [{"params": [p for _, p in named], "weight_decay": o["weight_decay"]}]
        # Fused on CUDA (kgc_kd.runtime.devices.fused_adamw); its clipping is configure_gradient_clipping's.
        fused = fused_adamw(p for _, p in named)
        opt = torch.optim.AdamW(groups, lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"], fused=fused or None)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = min(int(o["warmup_steps"]), total // 10)
        sched = get_linear_schedule_with_warmup(opt, warmup, max(total, 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

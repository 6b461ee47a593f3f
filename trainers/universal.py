"""DeepSpeed's universal-checkpoint converter (``ds_to_universal``), able to read Muon's optimizer state.

deepspeed 0.19.8 reads every optimizer group's state as Adam's (``exp_avg``, ``exp_avg_sq``): a Muon group holds a
``momentum_buffer`` only, and the conversion of an elastic resize fails with KeyError 'exp_avg'
(deepspeedai/DeepSpeed #8608; the fix, PR #8609, is not released). Rather than copy the converter, this module runs
it with one change where it reads a rank's optimizer state, and :func:`restore_muon_momentum` finishes the load:

- ZeRO 1/2 keep a rank's Muon momentum as every parameter of its partition whole, in partition order (not a flat
  partition like Adam's moments): it is cut into parameters and saved as one file, ``muon_momentum.pt``; the
  converter sees zero Adam moments for the group, whose files are deleted afterwards. After the load each rank
  rebuilds its buffer from the parameters of its new partition.
- ZeRO-3 keeps it partitioned like the fp32 weights, and its loader reads exp_avg and exp_avg_sq by name and the
  step from the first group: the momentum goes through as ``exp_avg`` (beside a zero ``exp_avg_sq``), the Muon
  groups get the step, and the loaded state is renamed back.

    python -m trainers.universal --input_folder ... --output_folder ...   (ds_to_universal's arguments)
"""

from __future__ import annotations

import os
import shutil
import tempfile

import torch

MUON_KEY = "momentum_buffer"
MOMENTUM_FILE = "muon_momentum.pt"  # ZeRO 1/2: {parameter name: full momentum}, beside the zero/ folder
_muon_params: set[str] = set()  # ZeRO 1/2 Muon parameters (their zero Adam moments are deleted)
_momentum: dict[str, torch.Tensor] = {}


def _as_adam(state: dict) -> bool:
    """Give a Muon group's state the keys the converter reads; True if it was one."""
    if MUON_KEY not in state or "exp_avg" in state:
        return False
    momentum = state[MUON_KEY]
    state["exp_avg"], state["exp_avg_sq"] = momentum, torch.zeros_like(momentum)
    return True


def _patch_zero12(ds_to_universal) -> None:
    """ZeRO 1/2: a rank's Muon momentum is not a flat partition like Adam's moments but every parameter of the
    partition whole, in partition order (stage_1_and_2 ``_muon_momentum_buffer``). It is cut into parameters
    here, into ``_momentum``; the converter sees zero Adam moments for the group, deleted afterwards."""
    from deepspeed.checkpoint import DeepSpeedCheckpoint
    from deepspeed.checkpoint.constants import (BASE_OPTIMIZER_STATE, OPTIMIZER_STATE_DICT, PARAM_SHAPES,
                                                PARAM_SLICE_MAPPINGS, SINGLE_PARTITION_OF_FP32_GROUPS)

    original = DeepSpeedCheckpoint.get_zero_checkpoint_state
    shapes: dict[str, torch.Size] = {}

    def get_zero_checkpoint_state(self, *args, **kwargs):
        sd = original(self, *args, **kwargs)
        optim = sd[OPTIMIZER_STATE_DICT]
        for group_id, state in optim[BASE_OPTIMIZER_STATE]["state"].items():
            if MUON_KEY not in state or "exp_avg" in state:
                continue
            if not shapes:
                for group in torch.load(self.mp_rank_files[0], map_location="cpu", weights_only=False)[PARAM_SHAPES]:
                    shapes.update(group)
            momentum, offset = state.pop(MUON_KEY), 0
            for name in optim[PARAM_SLICE_MAPPINGS][group_id]:  # the partition's parameters, in order
                shape = torch.Size(shapes[name])
                _momentum[name] = momentum[offset:offset + shape.numel()].reshape(shape).clone()
                offset += shape.numel()
            flat = optim[SINGLE_PARTITION_OF_FP32_GROUPS][group_id]
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(flat), torch.zeros_like(flat)
            _muon_params.update(optim[PARAM_SLICE_MAPPINGS][group_id])
        return sd

    DeepSpeedCheckpoint.get_zero_checkpoint_state = get_zero_checkpoint_state


def _patch_zero3(ds_to_universal, scratch: str) -> None:
    original = ds_to_universal.extract_zero_shards_stage3

    def extract_zero_shards_stage3(optim_files_grid, param_shapes_grid, dp_degree, temp_dir, indices, **kwargs):
        tp_index, dp_index = indices
        path = optim_files_grid[tp_index][dp_index]
        sd = torch.load(path, map_location="cpu", weights_only=False)
        states = sd["optimizer_state_dict"]["optimizer_state_dict"]["state"]
        changed = False
        for idx, state in states.items():
            if _as_adam(state):
                changed = True  # ZeRO-3's loader reads exp_avg by name: restore_muon_momentum renames it
        if changed:
            path = os.path.join(scratch, f"tp{tp_index}_dp{dp_index}_{os.path.basename(path)}")
            torch.save(sd, path)
            optim_files_grid = [list(row) for row in optim_files_grid]
            optim_files_grid[tp_index][dp_index] = path
        return original(optim_files_grid, param_shapes_grid, dp_degree, temp_dir, indices, **kwargs)

    save_state = ds_to_universal._save_optimizer_state_stage3

    def _save_optimizer_state_stage3(args, optim_files):
        """ZeRO-3's loader takes the step from the first group's state, which is Muon's and has none."""
        save_state(args, optim_files)
        path = os.path.join(args.output_folder, "zero", "optimizer_state.pt")
        sd = torch.load(path, map_location="cpu", weights_only=False)
        states = sd["optimizer_state_dict"]["state"]
        step = next((s["step"] for s in states.values() if "step" in s), 0)
        for state in states.values():
            state.setdefault("step", step)
        torch.save(sd, path)

    ds_to_universal.extract_zero_shards_stage3 = extract_zero_shards_stage3
    ds_to_universal._save_optimizer_state_stage3 = _save_optimizer_state_stage3


def _finish_zero12(output_folder: str) -> None:
    for name in _muon_params:
        for moment in ("exp_avg.pt", "exp_avg_sq.pt"):
            path = os.path.join(output_folder, "zero", name, moment)
            if os.path.exists(path):
                os.remove(path)
    if _momentum:
        torch.save(_momentum, os.path.join(output_folder, MOMENTUM_FILE))


def restore_muon_momentum(engine, folder: str) -> None:
    """After a universal load (``folder``: the converted tag directory), Muon's momentum in the layout of this
    world size: ZeRO 1/2 from the per-parameter file, ZeRO-3 from the moment it was loaded as."""
    opt = engine.optimizer
    if hasattr(opt, "fp32_partitioned_groups_flat"):  # ZeRO-3: loaded as exp_avg, in the partition's layout
        if getattr(opt, "use_muon", False):
            for i, flat in enumerate(opt.fp32_partitioned_groups_flat):
                state = opt.optimizer.state.get(flat, {})
                if opt.sub_groups_using_muon[i] and "exp_avg" in state:
                    state[MUON_KEY] = state.pop("exp_avg")
                    state.pop("exp_avg_sq", None)
        return
    path = os.path.join(folder, MOMENTUM_FILE)
    if not hasattr(opt, "params_in_partition") or not os.path.exists(path):
        return
    full = torch.load(path, map_location="cpu", weights_only=False)
    names = {p: n for n, p in engine.module.named_parameters()}
    for i, group in enumerate(opt.optimizer.param_groups):
        if group.get("use_muon"):
            flat = group["params"][0]
            buffer = torch.cat([full[names[p]].flatten() for p in opt.params_in_partition[i]])
            opt.optimizer.state[flat][MUON_KEY] = buffer.to(device=flat.device, dtype=flat.dtype)


def main() -> None:
    from deepspeed.checkpoint import ds_to_universal

    args = ds_to_universal.parse_arguments()
    scratch = tempfile.mkdtemp(prefix="sciscale-universal-")
    try:
        _patch_zero12(ds_to_universal)
        _patch_zero3(ds_to_universal, scratch)
        ds_to_universal.main(args)
        _finish_zero12(args.output_folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()

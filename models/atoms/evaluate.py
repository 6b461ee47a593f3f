"""The field's scores for interatomic potentials (the suite behind ``sciscale eval``).

Accuracy on the held-out structures, as fairchem's evaluator (``core/modules/evaluator.py``, S2EF) and the
MLIP literature report it:

* ``energy_mae_mev_atom``: mean over structures of |E_pred - E_ref| / atoms; ``energy_mae_mev``: of the total;
* ``force_mae_mev_a``: mean over every force component of every atom (so atom-weighted, as fairchem's
  ``forces_mae``), beside ``force_mae_zero_baseline_mev_a`` (predicting zero forces); per element
  ``force_mae_mev_a/<symbol>``;
* ``force_cosine``: the cosine of the angle between predicted and reference force vectors, averaged over
  atoms (``torch.cosine_similarity`` along the Cartesian axis, fairchem's ``forces_cosine_similarity``);
* ``stress_mae_mev_a3``: mean over the 9 components of the structures that have a stress label;
* ``efwt``: fairchem's energy-and-forces-within-threshold, the fraction of structures whose *total* energy
  error is below 0.02 eV and whose every force component error is below 0.03 eV/A.

Physical checks through the ASE calculator (``EvalOptions.physical_checks``), on a float64 copy of the model:
NVE energy drift over ``MD_STEPS`` velocity-Verlet steps from the largest of the first held-out structures
with Maxwell-Boltzmann velocities (|E_end - E_start| / atoms, and the slope of a linear fit of E / atoms
against time), and FIRE relaxation (positions only) of the first ``RELAX_STRUCTURES`` structures: the
fraction converged to ``RELAX_FMAX`` within ``RELAX_MAX_STEPS`` steps and the mean steps taken.

Cost: one forward (plus the force backward of conservative models) per micro-batch; per sample a few
floats are kept (forces for the parity plot up to ``PARITY_MAX_ATOMS`` atoms). The physical checks cost
MD_STEPS + up to RELAX_STRUCTURES x RELAX_MAX_STEPS single-structure calls (seconds to a minute for a
debug model on a CPU; see docs/atoms.md); switch them off for bounded evaluation during training.
"""

from __future__ import annotations

import contextlib
import copy
import time
from typing import Iterable

import numpy as np
import torch

from models.atoms.config import ELEMENTS
from models.family import EvalOptions, EvalReport, real_indices

EFWT_ENERGY_EV, EFWT_FORCE_EV_A = 0.02, 0.03  # fairchem's thresholds (total energy, every force component)
MD_STEPS, MD_TIMESTEP_FS, MD_TEMPERATURE_K = 1000, 1.0, 300.0
RELAX_STRUCTURES, RELAX_FMAX, RELAX_MAX_STEPS = 3, 0.05, 200
PARITY_MAX_ATOMS = 20_000
_CANDIDATES = 8  # held-out structures kept for the physical checks
COLUMNS = ["score", "value", "unit"]
UNITS = {"energy_mae_mev_atom": "meV/atom", "energy_mae_mev": "meV", "force_mae_mev_a": "meV/A",
         "force_mae_zero_baseline_mev_a": "meV/A", "force_cosine": "", "stress_mae_mev_a3": "meV/A^3",
         "efwt": "fraction", "nve_drift_mev_atom": "meV/atom", "nve_drift_rate_mev_atom_ps": "meV/atom/ps",
         "nve_max_excursion_mev_atom": "meV/atom", "fire_converged_fraction": "fraction", "fire_mean_steps": "steps"}


class _Totals:
    """Running sums over held-out structures, and what the parity plots and physical checks need."""

    def __init__(self):
        self.structures = self.atoms = self.stressed = self.efwt = 0
        self.sums = dict.fromkeys(("energy_atom", "energy", "force", "force_zero", "cosine", "stress"), 0.0)
        self.element_sum, self.element_count = np.zeros(len(ELEMENTS)), np.zeros(len(ELEMENTS))
        self.parity = {"energy_ref": [], "energy_pred": [], "n_atoms": [], "forces_ref": [], "forces_pred": []}
        self.candidates: list = []


def _structure_errors(out: dict, batch: dict, keep: torch.Tensor) -> dict:
    """Per-structure and per-atom errors of one micro-batch, restricted to the structures in ``keep``."""
    n = batch["n_atoms"]
    atom_keep = keep[batch["batch"]]
    d_energy = (out["energy"].detach().double() - batch["energy"].double()).abs()
    d_force = (out["forces"].detach().double() - batch["forces"].double()).abs()
    worst = torch.zeros(len(n), dtype=d_force.dtype, device=d_force.device).scatter_reduce(
        0, batch["batch"], d_force.amax(-1), "amax", include_self=False)  # largest component error per structure
    cosine = torch.cosine_similarity(out["forces"].detach().double(), batch["forces"].double(), dim=-1)
    return {"d_energy": d_energy[keep], "n": n[keep].double(), "d_force": d_force[atom_keep],
            "zero": batch["forces"].double().abs()[atom_keep], "cosine": cosine[atom_keep],
            "numbers": batch["numbers"][atom_keep], "worst": worst[keep]}


def _accumulate(t: _Totals, out: dict, batch: dict, keep: torch.Tensor) -> None:
    e = _structure_errors(out, batch, keep)
    t.structures += len(e["n"])
    t.atoms += len(e["d_force"])
    t.sums["energy_atom"] += float((e["d_energy"] / e["n"]).sum())
    t.sums["energy"] += float(e["d_energy"].sum())
    t.sums["force"] += float(e["d_force"].sum())
    t.sums["force_zero"] += float(e["zero"].sum())
    t.sums["cosine"] += float(e["cosine"].sum())
    t.efwt += int(((e["d_energy"] < EFWT_ENERGY_EV) & (e["worst"] < EFWT_FORCE_EV_A)).sum())
    numbers = e["numbers"].cpu().numpy()
    np.add.at(t.element_sum, numbers, e["d_force"].sum(-1).cpu().numpy())
    np.add.at(t.element_count, numbers, 3)
    if "stress" in out:
        has = batch["has_stress"][keep]
        d_stress = (out["stress"].detach().double() - batch["stress"].double()).abs()[keep]
        t.stressed += int(has.sum())
        t.sums["stress"] += float(d_stress[has].sum())


def _keep_for_plots(t: _Totals, out: dict, batch: dict, keep: torch.Tensor, options: EvalOptions) -> None:
    """Parity data (energies of every structure, forces up to PARITY_MAX_ATOMS) and check candidates."""
    atom_keep = keep[batch["batch"]]
    if options.plots:
        as_np = lambda x: x.detach().double().cpu().numpy()  # noqa: E731
        t.parity["energy_ref"].append(as_np(batch["energy"][keep]))
        t.parity["energy_pred"].append(as_np(out["energy"][keep]))
        t.parity["n_atoms"].append(as_np(batch["n_atoms"][keep]))
        room = max(0, PARITY_MAX_ATOMS - sum(len(f) for f in t.parity["forces_ref"]))
        t.parity["forces_ref"].append(as_np(batch["forces"][atom_keep])[:room])
        t.parity["forces_pred"].append(as_np(out["forces"][atom_keep])[:room])
    if options.physical_checks and len(t.candidates) < _CANDIDATES:
        t.candidates += structures(batch, keep)[: _CANDIDATES - len(t.candidates)]


def structures(batch: dict, keep: torch.Tensor) -> list:
    """ASE Atoms of the kept structures of a collated batch (positions, numbers, cell, pbc)."""
    from ase import Atoms

    pbc = batch.get("pbc", torch.ones(len(batch["n_atoms"]), 3, dtype=torch.bool)).cpu().numpy()
    out, start = [], 0
    for i, n in enumerate(batch["n_atoms"].tolist()):
        if bool(keep[i]):
            out.append(Atoms(numbers=batch["numbers"][start:start + n].cpu().numpy(),
                             positions=batch["positions"][start:start + n].double().cpu().numpy(),
                             cell=batch["cell"][i].double().cpu().numpy(), pbc=pbc[i]))
        start += n
    return out


def evaluate(model, batches: Iterable[dict], spec, manifest, options: EvalOptions = EvalOptions()) -> EvalReport:
    """The suite's ``evaluate``. Conservative models run with autograd on (their forces are -dE/dx)."""
    totals = _Totals()
    for batch in batches:
        picked = real_indices(batch["_valid"].tolist(), totals.structures, options.max_samples)
        if picked:
            batch = {k: v.to(options.device) for k, v in batch.items()}
            keep = torch.zeros(len(batch["n_atoms"]), dtype=torch.bool, device=options.device)
            keep[picked] = True
            with contextlib.nullcontext() if spec.forces == "conservative" else torch.no_grad():
                out = model(batch)
            _accumulate(totals, out, batch, keep)
            _keep_for_plots(totals, out, batch, keep, options)
        if options.max_samples is not None and totals.structures >= options.max_samples:
            break
    if totals.structures == 0:
        raise ValueError("atoms eval: the held-out data gave no real structures to score; check the dataset "
                         "(sciscale data inspect URL) and --max-samples")
    scores, notes = _scores(totals), {}
    figures = _parity_figures(totals) if options.plots else {}
    if options.physical_checks:
        checks, notes, trace = physical_checks(model, totals.candidates, options.device)
        scores.update(checks)
        if options.plots and trace is not None:
            figures["nve_energy"] = _trace_figure(*trace)
    return EvalReport(scores=scores, columns=list(COLUMNS), table=_table(scores, notes), figures=figures,
                      samples=totals.structures)


def _scores(t: _Totals) -> dict[str, float]:
    s = t.sums
    out = {"energy_mae_mev_atom": 1000 * s["energy_atom"] / t.structures,
           "energy_mae_mev": 1000 * s["energy"] / t.structures,
           "force_mae_mev_a": 1000 * s["force"] / (3 * t.atoms),
           "force_mae_zero_baseline_mev_a": 1000 * s["force_zero"] / (3 * t.atoms),
           "force_cosine": s["cosine"] / t.atoms, "efwt": t.efwt / t.structures}
    if t.stressed:
        out["stress_mae_mev_a3"] = 1000 * s["stress"] / (9 * t.stressed)
    for z in np.nonzero(t.element_count)[0]:
        out[f"force_mae_mev_a/{ELEMENTS[z]}"] = float(1000 * t.element_sum[z] / t.element_count[z])
    return out


def _table(scores: dict, notes: dict) -> list[dict]:
    rows = [{"score": k, "value": v, "unit": UNITS.get(k.split("/")[0], "")} for k, v in scores.items()]
    return rows + [{"score": k, "value": v, "unit": u} for k, (v, u) in notes.items()]


def physical_checks(model, candidates: list, device: str = "cpu") -> tuple[dict, dict, tuple | None]:
    """NVE drift and FIRE convergence through the ASE calculator on a float64 copy of ``model``:
    (scores, {table-only row: (value, unit)}, (times_ps, energies_per_atom_mev) of the NVE run)."""
    if not candidates:
        return {}, {}, None
    from models.atoms.calculator import SciscaleCalculator

    calc = SciscaleCalculator(copy.deepcopy(model), dtype=torch.float64, device=device)
    largest = max(candidates, key=len)
    scores, notes, trace = nve_drift(calc, largest.copy(), MD_STEPS)
    relax = fire_convergence(calc, [a.copy() for a in candidates[:RELAX_STRUCTURES]])
    return {**scores, **relax[0]}, {**notes, **relax[1]}, trace


def nve_drift(calc, atoms, steps: int, timestep_fs: float = MD_TIMESTEP_FS,
              temperature_k: float = MD_TEMPERATURE_K) -> tuple[dict, dict, tuple]:
    """Velocity-Verlet NVE from Maxwell-Boltzmann velocities (seeded); drift per atom in meV and meV/ps."""
    from ase import units
    from ase.md import velocitydistribution as vd
    from ase.md.verlet import VelocityVerlet

    atoms.calc = calc
    # ase >= 3.29 names it thermalize_momenta (MaxwellBoltzmannDistribution is deprecated there)
    draw = getattr(vd, "thermalize_momenta", vd.MaxwellBoltzmannDistribution)
    draw(atoms, temperature_K=temperature_k, rng=np.random.default_rng(0))
    vd.Stationary(atoms)
    from tqdm import tqdm

    dyn = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    energies = []
    dyn.attach(lambda: energies.append(atoms.get_total_energy()), interval=1)  # step 0 included
    start = time.perf_counter()
    with tqdm(total=steps, desc="NVE check", unit="step", disable=None, leave=False) as bar:  # off without a tty
        dyn.attach(lambda: bar.update(1 if dyn.nsteps else 0), interval=1)
        dyn.run(steps)
    wall = time.perf_counter() - start
    e = 1000 * np.asarray(energies) / len(atoms)
    t_ps = np.arange(len(e)) * timestep_fs / 1000
    slope = float(np.polyfit(t_ps, e, 1)[0]) if len(e) > 1 else 0.0
    scores = {"nve_drift_mev_atom": float(abs(e[-1] - e[0])), "nve_drift_rate_mev_atom_ps": slope,
              "nve_max_excursion_mev_atom": float(np.abs(e - e[0]).max())}
    notes = {"nve_steps": (steps, f"steps of {timestep_fs:g} fs, {len(atoms)} atoms, {temperature_k:g} K start"),
             "nve_wall_s": (round(wall, 2), f"s ({steps / max(wall, 1e-9):.1f} steps/s)")}
    return scores, notes, (t_ps, e - e[0])


def fire_convergence(calc, candidates: list, fmax: float = RELAX_FMAX,
                     max_steps: int = RELAX_MAX_STEPS) -> tuple[dict, dict]:
    """FIRE on positions: the fraction of ``candidates`` converged to ``fmax`` and the mean steps taken."""
    from ase.optimize import FIRE

    from tqdm import tqdm

    converged, steps, start = [], [], time.perf_counter()
    for atoms in tqdm(candidates, desc="FIRE check", unit="structure", disable=None, leave=False):
        atoms.calc = calc
        opt = FIRE(atoms, logfile=None)
        converged.append(bool(opt.run(fmax=fmax, steps=max_steps)))
        steps.append(opt.nsteps)
    scores = {"fire_converged_fraction": float(np.mean(converged)), "fire_mean_steps": float(np.mean(steps))}
    notes = {"fire_structures": (len(candidates), f"fmax {fmax:g} eV/A, at most {max_steps} steps"),
             "fire_wall_s": (round(time.perf_counter() - start, 2), "s")}
    return scores, notes


def _parity_figures(t: _Totals) -> dict:
    from models.atoms.plots import parity_from_arrays  # matplotlib only where figures are made

    cat = {k: np.concatenate(v) for k, v in t.parity.items()}
    return parity_from_arrays(cat["energy_ref"], cat["energy_pred"], cat["n_atoms"], cat["forces_ref"],
                              cat["forces_pred"])


def _trace_figure(t_ps: np.ndarray, energy: np.ndarray):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), constrained_layout=True)
    ax.plot(t_ps, energy, lw=1)
    ax.set(xlabel="time (ps)", ylabel="E - E(0) (meV/atom)", title="NVE total energy (velocity Verlet)")
    ax.grid(alpha=0.3)
    return fig

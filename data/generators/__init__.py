"""Data generators built on real numerical physics: name -> module (each defines add_arguments, run)."""

GENERATOR_MODULES: dict[str, str] = {
    "navier-stokes": "data.generators.navier_stokes",
    "wave": "data.generators.wave",
    "shallow-water": "data.generators.shallow_water",
    "emt": "data.generators.emt",
}

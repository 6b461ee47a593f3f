"""Converters from the formats users already have to sciscale shards: name -> module."""

CONVERTER_MODULES: dict[str, str] = {
    "poseidon": "data.converters.poseidon",
    "the-well": "data.converters.the_well",
    "pdebench": "data.converters.pdebench",
    "weatherbench2": "data.converters.weatherbench2",
    "extxyz": "data.converters.extxyz",
    "ase-db": "data.converters.ase_db",
}

"""Reproduce published tables from sweep definitions (TOML files in sweeps/).

`python -m ex2l_domainbed.reproduce {launch,status,delete_incomplete,collect} DEFINITION
--data_dir D --output_dir O`: a definition fixes a sweep's datasets, algorithms, hparams and
protocol, and the numbers to compare with; its jobs are `domainbed.scripts.sweep`'s (same
folders). Modules: `schema` (keys and types), `definition` (files, checks), `jobs` (sweep
jobs and their states), `preflight` (launcher, data, weights), `estimate` (cost), `compare`
(tables), `cli`. Needs this project's harness (not an upstream DomainBed checkout).
"""

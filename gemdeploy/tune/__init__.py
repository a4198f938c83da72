"""`gemdeploy tune`: the fastest ticket within an accuracy budget, measured on the runtime it will run on.

config.py declares the options, search.py holds the decisions (grids, refinement around the frontier, the Pareto
front and the pick: pure functions), runner.py chains mine -> export -> bench for every candidate.
"""

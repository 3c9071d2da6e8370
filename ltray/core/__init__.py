"""The algorithm, as pure functions over state_dict-keyed tensor dicts (never imports Ray, pandas or
matplotlib): permutation symmetry as data (`symmetry`, traced specs in `autospec`/`oprules`), the one
coordinate-descent matcher (`matching`), the transfer methods (`transfer`), trajectories (`trajectory`),
functional evaluation and gradients (`functional`) and the MLP first-layer cache (`first_layer`)."""

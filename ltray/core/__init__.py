"""The algorithm, over state_dict-keyed tensor dicts (never imports Ray, pandas or matplotlib): permutation
symmetry as data (`symmetry`; specs traced in `autospec` by the rules of `oprules` and `attention_rules`, over the
labels and groups of `labels`), the one coordinate-descent matcher (`matching`), the transfer methods
(`transfer`), trajectories and their files (`trajectory`, which reads and writes safetensors), functional
evaluation and gradients (`functional`) and the MLP first-layer cache (`first_layer`). It builds on ltray.data
(splits, batches) and ltray.models (the MLP, for the cache and specs)."""

"""Ray at the edge of ltray: the only modules that import Ray. `engine` (an embedded or joined cluster, the
trajectory store, bounded fan-out of pure functions as tasks), `sweep` (Ray Tune over transfer
hyper-parameters) and `ensemble` (the ensemble builder's fan-out)."""

"""A `ray up` cluster YAML checked offline, with Ray's own checks (`ltray check-cluster`): it imports Ray's
autoscaler code but starts nothing."""
from __future__ import annotations

import os

from ..errors import LtrayError


def check_cluster_config(path: str | os.PathLike) -> dict:
    """Validate a `ray up` YAML offline, as `ray up` does before it contacts the cloud: Ray's prepare_config
    (merge the provider's defaults) then validate_config (Ray's JSON schema and its consistency checks).
    Returns the prepared config; any problem is a one-line LtrayError."""
    import copy

    import jsonschema
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        config = yaml.safe_load(open(path))
    except OSError as e:
        raise LtrayError(f"cluster config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise LtrayError(f"cluster config {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(config, dict) or not isinstance(config.get("provider"), dict):
        raise LtrayError(f"cluster config {path} must be a mapping with a provider section")
    import logging

    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)  # prepare_config logs the defaults it fills in
    try:
        prepared = prepare_config(copy.deepcopy(config))
        validate_config(prepared)
    except jsonschema.ValidationError as e:
        where = "/".join(map(str, e.absolute_path)) or "top level"
        raise LtrayError(f"cluster config {path} does not validate at {where}: {e.message.splitlines()[0]}") from None
    except (ValueError, KeyError, TypeError, RuntimeError, NotImplementedError) as e:
        raise LtrayError(f"cluster config {path} does not validate: {str(e).strip().splitlines()[0]}") from None
    return prepared

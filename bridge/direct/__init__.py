"""Direction: agents (an LLM, the old agent service, or rules) fill what a scene leaves open.

The result is a lock file beside the spec (SPEC.direction.yaml) that the loader merges before
validation, so directed and hand-written specs pass exactly the same checks.
"""

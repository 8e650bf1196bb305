"""Dagster assets, one thin module per stage group: load, call the engine or core, report metadata.

No asset knows which compute engine runs it: each takes the ``compute`` resource
(:class:`~segmentation_pipeline.resources.EngineResource`) and hands on the engine's records.
"""

"""Vortex inside SGLang 0.5.17: ``sgl.Engine(..., vortex=VortexConfig(...))`` or ``--vortex-config '<json>'``.

Modules (only :mod:`.config` and :mod:`.policy` are meant for users; none of them is imported here, so
``import vortex_torch.engine.sgl`` never imports SGLang):

* :mod:`.config` ``VortexConfig`` (imports without SGLang); :mod:`.policy` programmable budgets;
* :mod:`.plugin` every hook into SGLang (the ``sglang.srt.plugins`` entry point); :mod:`.adapter` what
  ``import vortex_torch`` does (the ``vortex_torch.plugins`` entry point);
* :mod:`.server_rules` ServerArgs forcing and checks; :mod:`.flow_spec` a config's flow loaded and traced;
* :mod:`.planner` decode plans and completed-block lists; :mod:`.aux_store` the aux fields beside the pool;
  :mod:`.decode_core` indexer -> selection -> attention; :mod:`.backend` the SGLang backend subclasses;
* :mod:`.debug_dump` ``VORTEX_DEBUG_DUMP`` records and their replay through the reference executor.
"""

"""The streaming engine: causal, chunk-wise video students trained on their own rollouts.

Built on the generative engine (:mod:`distillery.generative`): the same processes, denoiser
wrapper, samplers and DMD pieces, for videos ``(B, T, C, H, W)``. Parts:

* :mod:`.masks`: block-causal, sliding-window, sink and two-stream attention masks;
* :mod:`.models`: the video transformer (bidirectional teacher, causal student) and its KV cache;
* :mod:`.rollout`: chunk schedules and rollouts (teacher forcing, diffusion forcing, self forcing);
* :mod:`.data`, :mod:`.metrics`, :mod:`.visual`: procedural videos with ground truth, their
  metrics, film strips and GIFs.
"""


def register() -> None:
    """Import the modules that register the streaming datasets (``DATASETS``), the video
    network (``DENOISERS``) and the streaming methods (``METHODS``)."""
    import importlib
    import pkgutil

    from . import data, models  # noqa: F401
    from . import objectives

    for info in pkgutil.iter_modules(objectives.__path__):
        importlib.import_module(f"{objectives.__name__}.{info.name}")

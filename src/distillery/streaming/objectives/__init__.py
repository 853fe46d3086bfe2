"""The streaming engine's training procedures, each a :class:`~distillery.generative.method.GenerativeMethod`
registered in :data:`~distillery.generative.method.METHODS`:

* ``video_denoising`` (:mod:`.video_denoising`): denoising on videos, one noise level per video
  (the bidirectional teacher), per chunk (diffusion forcing) or with clean context (teacher forcing);
* ``streaming_ode_init`` (:mod:`.ode_init`): regression of the causal student on the teacher's
  ODE trajectories (CausVid's initialisation);
* ``self_forcing`` (:mod:`.self_forcing`): DMD on the student's own chunk-wise rollout.
"""

"""The generative engine (C6): distilling many-step diffusion and flow teachers into few-step
students.

A **process** (:mod:`.processes`) says how data is noised: ``x_t = alpha(t) x0 + sigma(t) eps``
with continuous time ``t`` in [0, 1], ``t = 0`` clean data and ``t = 1`` (almost) pure noise.
Variance-preserving (linear, cosine), EDM/Karras and flow-matching processes share that form,
so every sampler, objective and metric here works with any of them.

A **denoiser** (:mod:`.denoisers`) is any network ``net(x_t, t, cond) -> prediction`` wrapped
with its process and what it predicts (``eps``, ``x0``, ``v`` or ``velocity``); the wrapper
converts between the parameterisations, so a teacher predicting ``eps`` and a student
predicting ``x0`` can be compared directly.

Parts: :mod:`.processes`, :mod:`.denoisers`, :mod:`.samplers` (Euler, DDIM, Heun, teacher ODE
pairs, classifier-free guidance), :mod:`.teachers` (analytic Gaussian-mixture score),
:mod:`.metrics` (sliced Wasserstein, MMD, mode coverage, digits FD), :mod:`.objectives`
(progressive, consistency, reflow, DMD/DMD2, GAN, OT), :mod:`.trainer` (the multi-player step
loop behind ``distillery run`` on a generative config).
"""

"""Step-distillation objectives of the generative engine, one module per method.

* :mod:`.progressive`: progressive distillation, each student step matches two teacher steps
  (Salimans & Ho 2022, arXiv:2202.00512);
* :mod:`.consistency`: consistency distillation with ``c_skip``/``c_out`` boundary conditions and
  an EMA target (Song et al. 2023, arXiv:2303.01469; LCM, Luo et al. 2023, arXiv:2310.04378);
* :mod:`.reflow`: rectified-flow reflow on teacher ODE pairs (Liu et al. 2022, arXiv:2209.03003);
* :mod:`.dmd`: distribution matching distillation, DMD and DMD2 (Yin et al. 2024,
  arXiv:2311.18828 and arXiv:2405.14867);
* :mod:`.gan`: a time-aware discriminator with non-saturating and hinge losses and R1;
* :mod:`.ot`: sliced-Wasserstein and entropic (Sinkhorn) OT terms between sample sets, from POT
  (Flamary et al. 2021, JMLR 22(78)).
"""

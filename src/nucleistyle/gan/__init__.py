"""The multi-domain disentangled style-transfer GAN (paper §2.3; DRIT++ / MDMM / HistAuGAN).

Modules: :mod:`~nucleistyle.gan.networks` (E_c, E_a, G, discriminators),
:mod:`~nucleistyle.gan.losses`, :mod:`~nucleistyle.gan.data` (domain-balanced sampling),
:mod:`~nucleistyle.gan.configs` (``GanConfig``), :mod:`~nucleistyle.gan.engine` (``train_gan``),
:mod:`~nucleistyle.gan.stylize` (``load_stylizer``), :mod:`~nucleistyle.gan.augment` (the augmented
training set) and :mod:`~nucleistyle.gan.evaluate` (structure preservation and style hit rate).
"""

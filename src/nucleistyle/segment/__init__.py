"""Mask R-CNN nuclei segmentation: the Deep Retina and Mirzaev DSB 2018 baselines.

Modules: :mod:`.configs` (the two baselines as dataclasses), :mod:`.transforms` (joint image +
label augmentation), :mod:`.dataset` (loading, validation split, sampling), :mod:`.model`
(torchvision Mask R-CNN), :mod:`.engine` (training with checkpoints and resume),
:mod:`.calibration` (post-processing ceiling, threshold calibration), :mod:`.modelfile` (the
model file), :mod:`.inference` (the network pass and each baseline's clean-up, from
:mod:`.postprocess`) and :mod:`.predict` (folders into submissions and label images).

Import the modules themselves (``from nucleistyle.segment.engine import train_segmenter``): this
package file stays free of torch so that reading a configuration is cheap (the workflow checks the
segmenter settings while it parses, before any job runs).
"""

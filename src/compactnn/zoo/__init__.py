"""The paper-reproduction assets: the offline datasets, the reference models of the papers and
torchvision's ResNet-18 / MobileNetV2 factories.

* :mod:`compactnn.zoo.data` -- MNIST, Fashion-MNIST, digits, the DDLR spiral, CIFAR-10
  (registry, per-source readers, loaders); public path ``compactnn.data``.
* :mod:`compactnn.zoo.models` -- lenet-caffe, kiaee-cnn, cifar-quick, resnet20/56,
  vgg16-cifar, ... (:func:`~compactnn.zoo.models.create`); public path ``compactnn.models``.
* :mod:`compactnn.zoo.torchvision_models` -- ``--factory`` targets built on torchvision's
  classes; public path ``compactnn.torchvision_models``.

Users, scripts and the rest of compactnn import the public paths, which re-export these
modules' names. The zoo depends only on errors and _validation inside compactnn: it sits below
the training loop, the methods and the API in tests/test_layering.py's LEVELS.
"""

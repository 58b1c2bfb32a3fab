"""Reference architectures of the papers compactnn implements.

One factory, :func:`create`, builds every model by registry name; :func:`list_models` lists the
names, :func:`model_spec` gives the defaults and provenance of a model and
:func:`default_input_shape` the per-sample input shape it expects.

Every model is built from standard ``torch.nn`` layers only (``Conv2d``, ``Linear``,
``BatchNorm2d``, ``ReLU``, ``MaxPool2d``, ``AvgPool2d``, ``AdaptiveAvgPool2d``, ``Dropout``,
``Flatten``, ``LocalResponseNorm``) with stable, meaningful attribute names (``conv1``,
``relu1``, ``fc1``, ...). Activations are ``nn.ReLU`` modules placed right after the layer they
follow, and flattening is an ``nn.Flatten`` module, so ``torch.fx.symbolic_trace`` and
torch-pruning see the whole graph. All models except the ResNets are :class:`ReferenceNet`
(an ``nn.Sequential``), so ``named_children()`` is the forward order.

Every model checks its input in eager mode and raises :class:`~compactnn.errors.InputShapeError`
naming the model, the first layer and the expected shape (the check is skipped while
``torch.fx`` traces, so traced graphs contain only the layers). Models whose classifier follows
an ``nn.Flatten`` accept exactly the spatial size they were created for (``input_size``); models
that end in global average pooling (``nin``, ``resnet20``, ``resnet56``) accept any size large
enough.

Architecture choices that the papers leave open are documented on each builder.

The package, by module: :mod:`~compactnn.zoo.models.base` (:class:`ModelSpec`,
:class:`ReferenceNet`, the input check and the geometry helpers), the builders by family
(:mod:`~compactnn.zoo.models.small`: the LeNets and the spiral MLP;
:mod:`~compactnn.zoo.models.convnets`: cifar-quick, kiaee-cnn, NIN, VGG-16, AlexNet;
:mod:`~compactnn.zoo.models.resnet`: the CIFAR ResNets) and :mod:`~compactnn.zoo.models.registry`
(the table of models and the public functions). Users import it as ``compactnn.models``.
"""

from compactnn.zoo.models.base import ModelSpec, ReferenceNet
from compactnn.zoo.models.registry import create, default_input_shape, list_models, model_spec
from compactnn.zoo.models.resnet import BasicBlock, CifarResNet

__all__ = [
    "ModelSpec",
    "ReferenceNet",
    "BasicBlock",
    "CifarResNet",
    "list_models",
    "create",
    "default_input_shape",
    "model_spec",
]

"""Model zoo: the architectures of the ReCU paper, binary (``_1w1a``) and full precision (``_fp``).

Build by name with :func:`create`; :func:`available` lists the names. Importing this
package registers every family, including the small quick-start networks of ``tiny``
(``digits_cnn_1w1a``, ``mlp_1w1a`` and their ``_fp`` twins) and torchvision's ResNet-18/34 layout
(``resnet34_torchvision``, the two-stage teacher). :func:`load_authors_checkpoint` reads the
ReCU authors' own checkpoints.
"""

from .authors import load_authors_checkpoint
from .cifar_resnet import resnet18_1w1a, resnet18_fp, resnet20_1w1a, resnet20_fp
from .imagenet_resnet import (
    resnet18_1w1a_imagenet,
    resnet18_fp_imagenet,
    resnet34_1w1a_imagenet,
    resnet34_fp_imagenet,
)
from .reactnet import reactnet_resnet18, reactnet_resnet18_fp
from .torchvision_resnet import from_torchvision_state_dict, resnet18_torchvision, resnet34_torchvision
# .registry imports every family, so importing this package registers all their models
from .registry import available, create, from_spec, is_binary, register
from .vgg import vgg_small_1w1a, vgg_small_fp

__all__ = [
    "create",
    "available",
    "from_spec",
    "is_binary",
    "register",
    "resnet20_1w1a",
    "resnet20_fp",
    "resnet18_1w1a",
    "resnet18_fp",
    "vgg_small_1w1a",
    "vgg_small_fp",
    "resnet18_1w1a_imagenet",
    "resnet34_1w1a_imagenet",
    "resnet18_fp_imagenet",
    "resnet34_fp_imagenet",
    "reactnet_resnet18",
    "reactnet_resnet18_fp",
    "resnet18_torchvision",
    "resnet34_torchvision",
    "from_torchvision_state_dict",
    "load_authors_checkpoint",
]

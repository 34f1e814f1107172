"""ImageNet's per-channel pixel statistics (RGB on the 0-1 scale), as torchvision computed them.

The input normalisation of every model trained with the torchvision/timm ImageNet recipe (ResNet, DeiT, Swin, CvT,
ConvNeXt, MViT, ...); the original ViT and Mixer releases use mean = std = 0.5 instead.
"""
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

"""Built-in plugins, installed as the package ``busi_web_plugins``: datasets (phantom, busi, imagefolder, mias),
backbones (ResNet50+CBAM, ResNets, a tiny CNN, the mammography CNN) and the CAM explainers.

They load through the same ``busi_web`` entry-point group as third-party plugins.
"""

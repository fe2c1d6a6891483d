"""Built-in plugins: datasets (phantom, busi, imagefolder), backbones and explainers."""

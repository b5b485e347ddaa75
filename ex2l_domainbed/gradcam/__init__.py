"""Differentiable Grad-CAM for training: closed form, autograd oracle, fused Triton kernel.

See `api.gradcam` for the entry point and `overlap` for the similarity measures.
"""
from ex2l_domainbed.gradcam.api import BACKENDS, GradCAM, choose_backend, gradcam  # noqa: F401
from ex2l_domainbed.gradcam.overlap import MEASURES  # noqa: F401
from ex2l_domainbed.gradcam.scores import SCORES  # noqa: F401

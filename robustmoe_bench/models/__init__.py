"""The MoE-CNN model family: one backbone definition gives Dense, S-Dense, Sparse and MoE models."""
from .backbones import ARCHITECTURES
from .builder import EXPERT_LAYOUTS, KINDS, ROUTERS, STES, LayerKind
from .factory import ModelSpec, RoutedNet, build_model, create_model, list_models
from .layers import ChannelMask, GateRouter, ResNetRouter, RoutedBatchNorm2d, RoutedConv2d, RoutedLinear, SharedRouter
from .routing import LayerRecord, Routed, RoutingContext
from .trace import RoutingTrace, execution, force_routing, routing_trace

__all__ = [
    "ARCHITECTURES", "EXPERT_LAYOUTS", "KINDS", "ROUTERS", "STES", "LayerKind", "ResNetRouter", "ModelSpec", "RoutedNet", "build_model", "create_model",
    "list_models", "ChannelMask", "GateRouter", "RoutedBatchNorm2d", "RoutedConv2d", "RoutedLinear",
    "SharedRouter", "LayerRecord", "Routed", "RoutingContext", "RoutingTrace", "execution", "force_routing",
    "routing_trace",
]

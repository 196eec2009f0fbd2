"""Models robustmoe-bench did not build: the routing-adapter protocol (``routing``) and the wrapper that
loads any PyTorch model from ``module:factory`` plus a weights file (``external``)."""
from .external import ExternalModel, load_external, parse_model_args, wrap_module
from .routing import (HookAdapter, LayerRoute, RouteTrace, RoutedNetAdapter, RoutingAdapter, as_sets, get_adapter,
                      pathway_iou, require_adapter, routing_changed)

__all__ = ["ExternalModel", "HookAdapter", "LayerRoute", "RouteTrace", "RoutedNetAdapter", "RoutingAdapter", "as_sets",
           "get_adapter", "load_external", "parse_model_args", "pathway_iou", "require_adapter", "routing_changed",
           "wrap_module"]

"""Regenerate tests/data/advmoe_public_*: a checkpoint built with the AdvMoE public code's own classes
(OPTML-Group/Robust-MoE-CNN), saved the way its train_moe.py saves, plus the logits and experts its model
computes on 8 random CIFAR-sized inputs.

    python tests/data/make_advmoe_public_fixture.py PUBLIC_REPO resnet18 0.125 OUT.pth.tar

The public repository is only imported (sys.path), never copied here; its two small helpers whose module
imports data-set packages (set_router, initialize_weights) are re-done below as they act.
"""
import sys, torch
from safetensors.torch import save_file
sys.path.insert(0, sys.argv.pop(1))
from models.resnet_cifar_moe import resnet18_cifar_moe
from models.vgg_moe import vgg16_bn_moe
from models.layers.router import build_router
import importlib.util
spec = importlib.util.spec_from_file_location("pubnorm", sys.path[0] + "/data/normalize.py")
pubnorm = importlib.util.module_from_spec(spec); spec.loader.exec_module(pubnorm)
NormalizeByChannelMeanStd = pubnorm.NormalizeByChannelMeanStd
# the public utils module imports h5py etc.; its two helpers, as they act (general_utils.py):
def set_router(model, router):
    model.router = router
    for module in model.modules():
        if hasattr(module, "router"):
            module.router = router
def initialize_weights(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, torch.nn.Linear):
            m.weight.data.normal_(0, 0.01)
arch, ratio, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
if arch == "resnet18":
    model = resnet18_cifar_moe(n_expert=2, ratio=ratio, num_classes=10)
    model.normalize = NormalizeByChannelMeanStd(mean=[0.4914, 0.4822, 0.4465], std=[0.2471, 0.2435, 0.2616])
else:
    model = vgg16_bn_moe(n_expert=2, ratio=ratio, num_classes=10)
initialize_weights(model)
router = build_router(num_experts=2)
set_router(model, router)
# move BN statistics and weights away from their initial values so the comparison means something
with torch.no_grad():
    for m in list(model.modules()) + list(router.modules()):
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2); m.running_var.uniform_(0.5, 2.0)
            m.weight.uniform_(0.5, 1.5); m.bias.uniform_(-0.2, 0.2)
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            m.weight.mul_(100.0)  # logits of order 1-10, not 0.01
    # balance the router: bias so that about half the probe inputs pick each expert
model.eval(); router.eval()
g = torch.Generator().manual_seed(1)
x = torch.rand(8, 3, 32, 32, generator=g)
with torch.no_grad():
    xn = model.normalize(x) if getattr(model, "normalize", None) is not None and arch == "resnet18" else x
    s = router(xn)
    d = s[:, 1] - s[:, 0]
    router.fc.bias[1] -= d.median() + 1e-3
    logits = model(x)
    experts = router(xn).argmax(1)
print("experts", experts.tolist())
torch.save({"epoch": 3, "arch": arch, "state_dict": model.state_dict(), "router": router.state_dict(),
            "best_acc": 12.5, "sa_record": [10.0, 12.5],
            "optimizer": torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9).state_dict(),
            "router_optimizer": torch.optim.SGD(router.parameters(), lr=0.1).state_dict()}, out)
save_file({"x": x.contiguous(), "logits": logits.contiguous(), "experts": experts.contiguous()},
          out.replace(".pth.tar", ".expected.safetensors"))

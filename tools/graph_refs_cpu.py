"""Diagnostic (CPU): run torch's own make_graphed_callables with no-op CUDA stand-ins through GraphedCalls
and count the captured modules and graph objects still alive after gc.collect() (stop 43: are the
dropped graphs unreachable, or does something keep them?). Not a test: it patches torch.cuda."""
import gc, weakref, contextlib
import torch
from torch import nn
import torch.cuda.graphs as G
from evalkit.train.cuda_graphs import GraphedCalls

graphs_made = []
class FakeGraph:
    def __init__(self, *a, **k): graphs_made.append(weakref.ref(self))
    def replay(self): pass
    def capture_begin(self, *a, **k): pass
    def capture_end(self): pass
    def pool(self): return (0, 1)
@contextlib.contextmanager
def fake_graph(cuda_graph, *a, **k):
    yield cuda_graph
class FakeStream:
    def __init__(self, *a, **k): pass
torch.cuda.CUDAGraph = FakeGraph; G.CUDAGraph = FakeGraph
torch.cuda.graph = fake_graph; G.graph = fake_graph
torch.cuda.synchronize = lambda *a, **k: None
torch.cuda.Stream = FakeStream
torch.cuda.stream = lambda s: contextlib.nullcontext()
torch.cuda.empty_cache = lambda: None
GraphedCalls.usable = lambda self, tensors: True

class Grow(nn.Module):
    def __init__(self, lin): super().__init__(); self.lin = lin
    def forward(self, x): return torch.relu(self.lin(x)).square()

lin = nn.Linear(8, 8)
calls = GraphedCalls(True, evict_stale=True, collect_every=2)
wr = []
def make():
    m = Grow(lin); wr.append(weakref.ref(m)); return m
for n in range(10, 20):
    x = torch.randn(n, 8, requires_grad=True)
    calls(("grow",), make, x).sum().backward()
gc.collect()
print("captures", calls.captures, "modules alive", sum(w() is not None for w in wr), "graphs alive", sum(g() is not None for g in graphs_made), "of", len(graphs_made))

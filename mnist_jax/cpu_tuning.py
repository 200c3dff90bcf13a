"""Speed tuning for XLA:CPU: the only place where the code asks what it runs on.

Two choices make small-batch MLP training faster on a CPU and change nothing elsewhere:

* `COMPILER_OPTIONS`, passed by `jit` to the compiled whole-epoch and whole-split functions: on
  jaxlib 0.10, XLA:CPU hands matrix products to YNNPACK by default, and its Eigen path is faster
  at this repo's batch sizes. The option is experimental, so it is set only for the jaxlib version
  it was measured on (elsewhere an unknown option is an error); GPU and TPU ignore `xla_cpu_*`.
* `dense_dot_general`, nn.Dense's product: `narrow_matmul` for the logits layer at small batches on
  the CPU backend, plain `lax.dot_general` everywhere else.

docs/benchmark.md gives the measurements behind both.
"""

import functools

import jax
from jax.custom_derivatives import SymbolicZero


def _compiler_options() -> dict:
  import jaxlib  # pylint: disable=import-outside-toplevel
  major_minor = tuple(int(part) for part in jaxlib.__version__.split(".")[:2])
  return {"xla_cpu_experimental_ynn_fusion_type": ""} if major_minor == (0, 10) else {}


COMPILER_OPTIONS = _compiler_options()

# jax.jit with COMPILER_OPTIONS, for the compiled functions a caller runs directly (whole epochs,
# whole splits): jax accepts options only on an outermost jit, not on train_step nested in them.
# To call such a function inside your own jit, call its `__wrapped__` function.
jit = functools.partial(jax.jit, compiler_options=COMPILER_OPTIONS)


@jax.custom_jvp
def narrow_matmul(x, kernel):
  """x @ kernel for a kernel with few columns (the logits layer): the same values and gradients,
  with the weight gradient computed in the orientation XLA:CPU is fast at.

  jax differentiates x @ kernel into x^T g, one product contracting the batch axis of both
  operands. With 10 output columns XLA:CPU (Eigen) computes that form slowly; as (g^T x)^T, a
  plain [10, batch] @ [batch, in] product between two small transposed copies, the same sums are
  much faster and give bit-identical parameters. The optimization barriers keep XLA from folding
  the transposes back into the product.
  """
  return x @ kernel


@functools.partial(narrow_matmul.defjvp, symbolic_zeros=True)
def _narrow_matmul_jvp(primals, tangents):
  x, kernel = primals
  dx, dkernel = tangents
  barrier = jax.lax.optimization_barrier
  out = x @ kernel  # jax calls this rule only when dx or dkernel is nonzero
  if isinstance(dkernel, SymbolicZero):
    return out, dx @ kernel
  dout = barrier(barrier(dkernel.T) @ x.T).T  # transposed by reverse mode into (barrier(g^T) x)^T
  return out, dout if isinstance(dx, SymbolicZero) else dx @ kernel + dout


# Where narrow_matmul pays: at larger batches it was no faster, and its sums differ from jax's in
# the last bit there.
NARROW_OUTPUTS, SMALL_BATCH = 16, 256


def dense_dot_general(x, kernel, dimension_numbers, precision=None, **kwargs):
  """nn.Dense's product: `narrow_matmul` for narrow layers and small batches on CPU."""
  if (jax.default_backend() == "cpu" and x.ndim == 2 and x.shape[0] <= SMALL_BATCH
      and kernel.shape[1] <= NARROW_OUTPUTS and dimension_numbers == (((1,), (0,)), ((), ()))
      and precision is None and not kwargs):
    return narrow_matmul(x, kernel)
  return jax.lax.dot_general(x, kernel, dimension_numbers, precision=precision, **kwargs)

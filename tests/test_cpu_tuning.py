"""The XLA:CPU speed tuning changes speed only."""
import jax
import jax.numpy as jnp
import numpy as np

from mnist_jax import cpu_tuning


def test_narrow_matmul_has_the_plain_products_values_and_derivatives():
  """The logits layer's custom weight-gradient orientation changes nothing but speed: values,
  reverse and forward derivatives (also w.r.t. the input), second derivatives and vmap agree with
  jax's own rule for x @ kernel."""
  kx, kk, kt = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (32, 100))
  kernel = jax.random.normal(kk, (100, 10))
  target = jax.random.normal(kt, (32, 10))
  loss = lambda matmul: lambda x, k: jnp.sum(jnp.tanh(matmul(x, k)) * target[:, :k.shape[1]])
  ours, plain = loss(cpu_tuning.narrow_matmul), loss(jnp.matmul)
  small_x, small_kernel = x[:, :5], kernel[:5, :3]
  np.testing.assert_array_equal(cpu_tuning.narrow_matmul(x, kernel), x @ kernel)
  for got, want in [
      (jax.grad(ours, (0, 1))(x, kernel), jax.grad(plain, (0, 1))(x, kernel)),
      (jax.jvp(lambda k: ours(x, k), (kernel,), (kernel,)),
       jax.jvp(lambda k: plain(x, k), (kernel,), (kernel,))),
      (jax.hessian(lambda k: ours(small_x, k))(small_kernel),  # forward-over-reverse
       jax.hessian(lambda k: plain(small_x, k))(small_kernel)),
      (jax.vmap(jax.grad(ours, 1), (None, 0))(x, jnp.stack([kernel, 2 * kernel])),
       jax.vmap(jax.grad(plain, 1), (None, 0))(x, jnp.stack([kernel, 2 * kernel]))),
  ]:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got, want)


def test_dense_dot_general_takes_narrow_matmul_only_where_it_pays():
  x, narrow, wide = jnp.ones((32, 8)), jnp.ones((8, 10)), jnp.ones((8, 64))
  dims = (((1,), (0,)), ((), ()))
  jaxpr = lambda *args: str(jax.make_jaxpr(lambda a, b: cpu_tuning.dense_dot_general(a, b, dims))(*args))
  on_cpu = jax.default_backend() == "cpu"
  assert ("custom_jvp_call" in jaxpr(x, narrow)) == on_cpu
  assert "custom_jvp_call" not in jaxpr(x, wide)
  assert "custom_jvp_call" not in jaxpr(jnp.ones((1024, 8)), narrow)  # large batches: jax's own


def test_the_compiler_option_is_on_for_the_installed_jaxlib():
  """COMPILER_OPTIONS holds an experimental XLA:CPU option, measured on jaxlib 0.10 and set only
  there (another jaxlib may reject it). An upgrade fails here, loudly, instead of silently
  dropping the tuning: measure the option on the new jaxlib (docs/benchmark.md), then update the
  version gate in cpu_tuning._compiler_options."""
  import jaxlib  # pylint: disable=import-outside-toplevel
  assert cpu_tuning.COMPILER_OPTIONS, (
      f"jaxlib {jaxlib.__version__}: cpu_tuning sets no compiler option for this version")
  compiled = cpu_tuning.jit(lambda x: x @ x).lower(jnp.ones((8, 8))).compile()
  np.testing.assert_allclose(compiled(jnp.ones((8, 8))), np.full((8, 8), 8.0))

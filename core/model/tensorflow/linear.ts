/**
 * Linear layers and the logits product on the tensorflow backend: BatchMatMulV2 and BiasAdd, with
 * the gradients written out (BiasAddGrad for the bias, GELU's derivative in three ops).
 */
import type * as tf from '../tfjs.js';

import { type Activation, customOp } from '../ops/index.js';
import { add, batchMatMul, mul, op, scalar, typeAttr, unary } from './native.js';

const biasAdd = (x: tf.Tensor, b: tf.Tensor): tf.Tensor => op('BiasAdd', [typeAttr('T')], [x, b]);
/** Column sums of a [N, C] gradient: the bias gradient. */
const biasGrad = (dy: tf.Tensor): tf.Tensor => op('BiasAddGrad', [typeAttr('T')], [dy]);

const SQRT1_2 = Math.SQRT1_2;
const INV_SQRT_2PI = 1 / Math.sqrt(2 * Math.PI);

/** x [N, in] · weightᵀ ([out, in], torch layout) + bias, then exact GELU when asked. */
export function tfLinear(
  x: tf.Tensor2D,
  weight: tf.Tensor2D,
  bias: tf.Tensor1D,
  activation: Activation = 'none',
): tf.Tensor2D {
  const f = customOp(([xt, wt, bt], save) => {
    const z = biasAdd(batchMatMul(xt, wt, false, true), bt);
    if (activation === 'none') {
      save([xt, wt]);
      return {
        value: z,
        gradFunc: (dy, [xs, ws]) => [batchMatMul(dy, ws, false, false), batchMatMul(dy, xs, true, false), biasGrad(dy)],
      };
    }
    // gelu(z) = z·Φ(z), Φ(z) = (1 + erf(z/√2))/2; gelu'(z) = Φ(z) + z·φ(z), φ(z) = exp(−z²/2)/√(2π).
    const cdf = mul(add(unary('Erf', mul(z, scalar(SQRT1_2))), scalar(1)), scalar(0.5));
    save([xt, wt, z, cdf]);
    return {
      value: mul(z, cdf),
      gradFunc: (dy, [xs, ws, zs, cs]) => {
        const pdf = unary('Exp', mul(unary('Square', zs), scalar(-0.5)));
        const slope = add(mul(mul(zs, pdf), scalar(INV_SQRT_2PI)), cs);
        const dz = mul(dy, slope);
        return [batchMatMul(dz, ws, false, false), batchMatMul(dz, xs, true, false), biasGrad(dz)];
      },
    };
  });
  return f(x, weight, bias) as tf.Tensor2D;
}

/** a [M, K] · bᵀ (b [N, K]): the logits product h · embed_outᵀ. */
export function tfMatMulNT(a: tf.Tensor2D, b: tf.Tensor2D): tf.Tensor2D {
  const f = customOp(([at, bt], save) => {
    save([at, bt]);
    return {
      value: batchMatMul(at, bt, false, true),
      gradFunc: (dy, [as, bs]) => [batchMatMul(dy, bs, false, false), batchMatMul(dy, as, true, false)],
    };
  });
  return f(a, b) as tf.Tensor2D;
}

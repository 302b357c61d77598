/** LayerNorm on the tensorflow backend, with the gradient written out. */
import type * as tf from '../tfjs.js';

import { customOp } from '../ops/index.js';
import { add, mul, reduce, scalar, sub, unary } from './native.js';

/** LayerNorm over the last axis of x [N, D], with the gradient written out (11 ops where autodiff records about 30). */
export function tfLayerNorm(x: tf.Tensor2D, weight: tf.Tensor1D, bias: tf.Tensor1D, eps: number): tf.Tensor2D {
  const f = customOp(([xt, wt, bt], save) => {
    const xc = sub(xt, reduce('Mean', xt, [1], true));
    const rstd = unary('Rsqrt', add(reduce('Mean', unary('Square', xc), [1], true), scalar(eps)));
    const xhat = mul(xc, rstd);
    save([xhat, rstd, wt]);
    return {
      value: add(mul(xhat, wt), bt),
      gradFunc: (dy, [xh, rs, ws]) => {
        // dx = rstd · (g − mean(g) − x̂ · mean(g · x̂)), g = dy · w
        const g = mul(dy, ws);
        const proj = mul(xh, reduce('Mean', mul(g, xh), [1], true));
        const dx = mul(sub(sub(g, reduce('Mean', g, [1], true)), proj), rs);
        return [dx, reduce('Sum', mul(dy, xh), [0], false), reduce('Sum', dy, [0], false)];
      },
    };
  });
  return f(x, weight, bias) as tf.Tensor2D;
}

/**
 * The one way offshoot imports tfjs. The Node build of @tensorflow/tfjs-core registers neither
 * gradients nor chained tensor methods; the @tensorflow/tfjs bundle does, into the registries that
 * all copies of tfjs-core share, so importing it once here makes autodiff work on every backend.
 */
import '@tensorflow/tfjs';

export * from '@tensorflow/tfjs-core';

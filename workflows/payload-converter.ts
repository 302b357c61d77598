/**
 * offshoot's payload converter: Temporal's default (JSON) with a size check, so a payload over 2 MB
 * fails where it is made, with a message naming the limit, instead of as an opaque server error.
 * Used by the client, the workers and (through `payloadConverterPath`) the workflow bundle.
 */
import { type Payload, type PayloadConverter, ValueError, defaultPayloadConverter } from '@temporalio/common';

import { MAX_PAYLOAD_BYTES } from './types.js';

class SizeLimitedPayloadConverter implements PayloadConverter {
  toPayload<T>(value: T): Payload {
    const payload = defaultPayloadConverter.toPayload(value);
    const bytes = payload.data?.length ?? 0;
    if (bytes > MAX_PAYLOAD_BYTES) {
      throw new ValueError(
        `payload of ${(bytes / 1048576).toFixed(2)} MB exceeds offshoot's ${MAX_PAYLOAD_BYTES / 1048576} MB limit: ` +
          'workflows and activities exchange references (checkpoint paths with content hashes, blobs on shared storage), never tensors or large state',
      );
    }
    return payload;
  }

  fromPayload<T>(payload: Payload): T {
    return defaultPayloadConverter.fromPayload<T>(payload);
  }
}

export const payloadConverter: PayloadConverter = new SizeLimitedPayloadConverter();

// Walks the config schema's tree of objects down to its leaves (the settable keys), so that the
// environment variables, the mode keys and their docs follow the schema instead of a copy of it.
import { z } from "zod";

export interface Leaf {
  path: string[];
  /** The key's schema without its default/prefault/optional wrappers. */
  schema: z.ZodType;
}

/** The schema inside default/prefault/optional/nullable wrappers. */
export function unwrap(s: z.ZodType): z.ZodType {
  let cur = s;
  for (let i = 0; i < 8; i++) {
    const t = cur.def.type;
    if (t !== "default" && t !== "prefault" && t !== "optional" && t !== "nullable") break;
    cur = (cur.def as unknown as { innerType: z.ZodType }).innerType;
  }
  return cur;
}

/** Every leaf below `obj` (objects are descended into; arrays and scalars are leaves). */
export function schemaLeaves(obj: z.ZodObject, prefix: string[] = []): Leaf[] {
  const out: Leaf[] = [];
  for (const [key, s] of Object.entries(obj.shape)) {
    const inner = unwrap(s as z.ZodType);
    if (inner instanceof z.ZodObject) out.push(...schemaLeaves(inner, [...prefix, key]));
    else out.push({ path: [...prefix, key], schema: inner });
  }
  return out;
}

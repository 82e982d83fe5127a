"""The platform's online path: one planner (Feast's exact Redis layout) shared by two engines.

- ``layout``: per feature view, the Redis key bytes (Feast's ``serialize_entity_key`` + project), the hash
  field names (``mmh3("view:feature")``, ``_ts:view``) and bulk encoders/decoders of Feast's ``ValueProto``;
- ``redis_client``: one connection factory for a Redis node or a Redis Cluster, from the environment contract;
- ``materialize``: the vectorized writer (streams a build, newest row per entity, deletes departed entities);
- ``reader``: planned reads (pipelined HMGET, TTL enforced) used by ``featurectl online`` and the server;
- ``server``: the Feast-compatible HTTP feature server.
"""

"""Generated from proto/acre/store/v1/store.proto by `python -m acre_store.gen_proto`."""

"""The stages of imagenet-shards: each module a pure core plus thin Beam wiring."""

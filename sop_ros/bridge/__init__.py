"""The link between robots and the cloud over Zenoh: episodes up (robot -> cloud), signed policies down."""

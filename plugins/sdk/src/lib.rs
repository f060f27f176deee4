//! The plugin SDK: the stable C ABI a plugin exports and a safe trait over it (see the plugins issue).

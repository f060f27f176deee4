//! A plugin from another ABI version: its descriptor starts with ABI version 999 (the only field a
//! host reads before refusing it).

#[repr(C)]
pub struct FutureDescriptor {
    pub abi_version: u32,
}

static DESCRIPTOR: FutureDescriptor = FutureDescriptor { abi_version: 999 };

#[no_mangle]
pub extern "C" fn musicgen_interp_plugin() -> *const FutureDescriptor {
    &DESCRIPTOR
}

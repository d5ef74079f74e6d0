//! Test fixture: a plugin built "for another framework version". It exports
//! the version symbol with a version no worker speaks, and no vtable; the
//! loader must refuse it by the version alone, before touching anything else.

/// The ABI version this fixture claims.
#[no_mangle]
pub extern "C" fn mapreduce_plugin_abi_version() -> u32 {
    999
}

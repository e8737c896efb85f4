//! The `#[policy]` attribute of adc-sdk: put it on `impl Policy for T` to
//! declare the hooks the block writes and to export `T` from a Wasm
//! component.

use proc_macro::TokenStream;
use quote::quote;
use syn::{parse_macro_input, ImplItem, ItemImpl};

/// The hook methods of `Policy` and the `Hooks` constant each one sets.
const HOOKS: &[(&str, &str)] = &[
    ("on_connect", "CONNECT"),
    ("on_request_headers", "REQUEST_HEADERS"),
    ("on_request_body", "REQUEST_BODY"),
    ("on_backend_selected", "BACKEND_SELECTED"),
    ("on_backend_failed", "BACKEND_FAILED"),
    ("on_response_headers", "RESPONSE_HEADERS"),
    ("on_response_body", "RESPONSE_BODY"),
    ("on_end", "END"),
];

/// Declare the hooks an `impl Policy for T` block writes, so the host calls
/// only those, and export `T` as the component's policy when compiling to
/// Wasm. Use it once per policy crate.
#[proc_macro_attribute]
pub fn policy(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[policy] takes no arguments",
        )
        .to_compile_error()
        .into();
    }
    let mut block = parse_macro_input!(item as ItemImpl);
    let is_policy_impl = block
        .trait_
        .as_ref()
        .and_then(|(_, path, _)| path.segments.last())
        .is_some_and(|s| s.ident == "Policy");
    if !is_policy_impl {
        return syn::Error::new_spanned(&block.self_ty, "#[policy] goes on `impl Policy for T`")
            .to_compile_error()
            .into();
    }

    let mut hooks = Vec::new();
    for item in &block.items {
        if let ImplItem::Fn(f) = item {
            let name = f.sig.ident.to_string();
            if let Some((_, constant)) = HOOKS.iter().find(|(method, _)| *method == name) {
                let constant = syn::Ident::new(constant, proc_macro2::Span::call_site());
                hooks.push(quote!(::adc_sdk::Hooks::#constant));
            }
        }
    }
    let set = hooks.into_iter().fold(
        quote!(::adc_sdk::Hooks::NONE),
        |acc, h| quote!(#acc.union(#h)),
    );
    block
        .items
        .push(syn::parse_quote!(const HOOKS: ::adc_sdk::Hooks = #set;));

    let ty = &block.self_ty;
    quote! {
        #block

        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        type __AdcPolicyExport = ::adc_sdk::__private::Export<#ty>;
        #[cfg(target_arch = "wasm32")]
        ::adc_sdk::__private::export!(__AdcPolicyExport with_types_in ::adc_sdk::__private::bindings);
    }
    .into()
}

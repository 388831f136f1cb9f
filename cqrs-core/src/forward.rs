//! The one source of every store trait's forwarding impls.
//!
//! Each store trait (`EventLog`, `SnapshotStore`, `CheckpointStore`, `Inspect`) is
//! written once, as a table: a macro in the trait's module that hands its docs, its
//! required methods and its provided methods (with their bodies) to a callback macro.
//! Two callbacks read the table:
//!
//! - [`define_store_trait!`] writes the trait itself, its impls for `&S`, `Arc<S>` and
//!   `Box<S>` (every method, provided ones included, forwarded: a wrapper never loses a
//!   backend's override), its object-safe twin (`Dyn*`, boxed futures and streams) and
//!   the twin's blanket impl;
//! - [`forward_to_dyn!`] writes the trait's impl for a handle over a `dyn` twin
//!   (`BoxEventStore`).
//!
//! Adding a method to a store trait is therefore one edit, in its table, plus the
//! backends that override it.
//!
//! A method's return is written `future<'a> T` (an `impl Future<Output = T> + Send + 'a`),
//! `stream<'a> T` (an `impl Stream<Item = T> + Send + 'a`) or `value<'_> T` (a plain
//! `T`).

/// The return type of a store method, from its kind.
macro_rules! store_ret {
    (future, $lt:lifetime, $ret:ty) => { impl ::std::future::Future<Output = $ret> + Send + $lt };
    (stream, $lt:lifetime, $ret:ty) => { impl ::futures::Stream<Item = $ret> + Send + $lt };
    (value, $lt:lifetime, $ret:ty) => { $ret };
}

/// The return type of a store method's object-safe twin, from its kind.
macro_rules! store_dyn_ret {
    (future, $lt:lifetime, $ret:ty) => { ::futures::future::BoxFuture<$lt, $ret> };
    (stream, $lt:lifetime, $ret:ty) => { ::futures::stream::BoxStream<$lt, $ret> };
    (value, $lt:lifetime, $ret:ty) => { $ret };
}

/// Boxes a future or a stream for the object-safe twin; a plain value stays as it is.
macro_rules! store_dyn_wrap {
    (future, $call:expr) => {
        ::std::boxed::Box::pin($call)
    };
    (stream, $call:expr) => {
        ::std::boxed::Box::pin($call)
    };
    (value, $call:expr) => {
        $call
    };
}

/// Writes a store trait, its `&S`/`Arc<S>`/`Box<S>` forwarding impls, its object-safe
/// twin and the twin's blanket impl, from the trait's table.
macro_rules! define_store_trait {
    (
        ()
        $(#[$attr:meta])*
        pub trait $trait:ident: [$($sup:tt)*];
        $(#[$dyn_attr:meta])*
        pub trait $dyn:ident: [$($dyn_sup:tt)*];
        required {$(
            $(#[$r_attr:meta])*
            fn $r_name:ident $(<$r_lt:lifetime>)? (&$($r_slt:lifetime)? $r_self:ident $(, $r_arg:ident: $r_ty:ty)* $(,)?)
                -> $r_kind:ident<$r_rlt:lifetime> $r_ret:ty;
        )*}
        provided {$(
            $(#[$p_attr:meta])*
            fn $p_name:ident $(<$p_lt:lifetime>)? (&$($p_slt:lifetime)? $p_self:ident $(, $p_arg:ident: $p_ty:ty)* $(,)?)
                -> $p_kind:ident<$p_rlt:lifetime> $p_ret:ty $p_body:block
        )*}
    ) => {
        $(#[$attr])*
        pub trait $trait: $($sup)* {
            $(
                $(#[$r_attr])*
                fn $r_name $(<$r_lt>)? (&$($r_slt)? $r_self $(, $r_arg: $r_ty)*)
                    -> store_ret!($r_kind, $r_rlt, $r_ret);
            )*
            $(
                $(#[$p_attr])*
                fn $p_name $(<$p_lt>)? (&$($p_slt)? $p_self $(, $p_arg: $p_ty)*)
                    -> store_ret!($p_kind, $p_rlt, $p_ret) $p_body
            )*
        }

        define_store_trait!(@forward $trait; &S;
            $( fn $r_name $(<$r_lt>)? (&$($r_slt)? $r_self $(, $r_arg: $r_ty)*) -> $r_kind<$r_rlt> $r_ret; )*
            $( fn $p_name $(<$p_lt>)? (&$($p_slt)? $p_self $(, $p_arg: $p_ty)*) -> $p_kind<$p_rlt> $p_ret; )*
        );
        define_store_trait!(@forward $trait; ::std::sync::Arc<S>;
            $( fn $r_name $(<$r_lt>)? (&$($r_slt)? $r_self $(, $r_arg: $r_ty)*) -> $r_kind<$r_rlt> $r_ret; )*
            $( fn $p_name $(<$p_lt>)? (&$($p_slt)? $p_self $(, $p_arg: $p_ty)*) -> $p_kind<$p_rlt> $p_ret; )*
        );
        define_store_trait!(@forward $trait; ::std::boxed::Box<S>;
            $( fn $r_name $(<$r_lt>)? (&$($r_slt)? $r_self $(, $r_arg: $r_ty)*) -> $r_kind<$r_rlt> $r_ret; )*
            $( fn $p_name $(<$p_lt>)? (&$($p_slt)? $p_self $(, $p_arg: $p_ty)*) -> $p_kind<$p_rlt> $p_ret; )*
        );

        $(#[$dyn_attr])*
        pub trait $dyn: $($dyn_sup)* {
            $(
                #[allow(missing_docs)]
                fn $r_name $(<$r_lt>)? (&$($r_slt)? $r_self $(, $r_arg: $r_ty)*)
                    -> store_dyn_ret!($r_kind, $r_rlt, $r_ret);
            )*
            $(
                #[allow(missing_docs)]
                fn $p_name $(<$p_lt>)? (&$($p_slt)? $p_self $(, $p_arg: $p_ty)*)
                    -> store_dyn_ret!($p_kind, $p_rlt, $p_ret);
            )*
        }

        impl<S: $trait + 'static> $dyn for S {
            $(
                fn $r_name $(<$r_lt>)? (&$($r_slt)? $r_self $(, $r_arg: $r_ty)*)
                    -> store_dyn_ret!($r_kind, $r_rlt, $r_ret) {
                    store_dyn_wrap!($r_kind, <S as $trait>::$r_name($r_self $(, $r_arg)*))
                }
            )*
            $(
                fn $p_name $(<$p_lt>)? (&$($p_slt)? $p_self $(, $p_arg: $p_ty)*)
                    -> store_dyn_ret!($p_kind, $p_rlt, $p_ret) {
                    store_dyn_wrap!($p_kind, <S as $trait>::$p_name($p_self $(, $p_arg)*))
                }
            )*
        }
    };
    (@forward $trait:ident; $wrapper:ty;
        $( fn $name:ident $(<$lt:lifetime>)? (&$($slt:lifetime)? $self_:ident $(, $arg:ident: $ty:ty)*)
            -> $kind:ident<$rlt:lifetime> $ret:ty; )*
    ) => {
        impl<S: $trait + ?Sized> $trait for $wrapper {
            $(
                fn $name $(<$lt>)? (&$($slt)? $self_ $(, $arg: $ty)*) -> store_ret!($kind, $rlt, $ret) {
                    <S as $trait>::$name(&**$self_ $(, $arg)*)
                }
            )*
        }
    };
}

/// Writes a store trait's impl for a handle whose field `.0` derefs to a `dyn` twin,
/// from the trait's table.
macro_rules! forward_to_dyn {
    (
        ($handle:ty, $target:ty)
        $(#[$attr:meta])*
        pub trait $trait:ident: [$($sup:tt)*];
        $(#[$dyn_attr:meta])*
        pub trait $dyn:ident: [$($dyn_sup:tt)*];
        required {$(
            $(#[$r_attr:meta])*
            fn $r_name:ident $(<$r_lt:lifetime>)? (&$($r_slt:lifetime)? $r_self:ident $(, $r_arg:ident: $r_ty:ty)* $(,)?)
                -> $r_kind:ident<$r_rlt:lifetime> $r_ret:ty;
        )*}
        provided {$(
            $(#[$p_attr:meta])*
            fn $p_name:ident $(<$p_lt:lifetime>)? (&$($p_slt:lifetime)? $p_self:ident $(, $p_arg:ident: $p_ty:ty)* $(,)?)
                -> $p_kind:ident<$p_rlt:lifetime> $p_ret:ty $p_body:block
        )*}
    ) => {
        impl $trait for $handle {
            $(
                fn $r_name $(<$r_lt>)? (&$($r_slt)? $r_self $(, $r_arg: $r_ty)*)
                    -> store_ret!($r_kind, $r_rlt, $r_ret) {
                    <$target as $dyn>::$r_name(&*$r_self.0 $(, $r_arg)*)
                }
            )*
            $(
                fn $p_name $(<$p_lt>)? (&$($p_slt)? $p_self $(, $p_arg: $p_ty)*)
                    -> store_ret!($p_kind, $p_rlt, $p_ret) {
                    <$target as $dyn>::$p_name(&*$p_self.0 $(, $p_arg)*)
                }
            )*
        }
    };
}

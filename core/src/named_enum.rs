//! [`named_enum!`](crate::named_enum): a fieldless enum whose variants have fixed names (what
//! is stored, sent and shown), each written once.

/// Declares a fieldless enum and, from one `Variant => "name"` list: `ALL` (every variant, in
/// declaration order), `name()` (the variant's name), `parse(name)` (the variant of that name,
/// if any) and `Display` (the name). Attributes and doc comments on the enum and its variants
/// are kept.
///
/// ```
/// ota_core::named_enum! {
///     /// A colour.
///     #[derive(Debug, Clone, Copy, PartialEq, Eq)]
///     pub enum Colour {
///         /// Red.
///         Red => "red",
///         /// Dark blue.
///         DarkBlue => "dark-blue",
///     }
/// }
/// assert_eq!(Colour::ALL, [Colour::Red, Colour::DarkBlue]);
/// assert_eq!(Colour::DarkBlue.name(), "dark-blue");
/// assert_eq!(Colour::parse("red"), Some(Colour::Red));
/// assert_eq!(Colour::parse("Red"), None);
/// assert_eq!(format!("{}", Colour::DarkBlue), "dark-blue");
/// ```
#[macro_export]
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $ty:ident {
            $($(#[$doc:meta])* $variant:ident => $name:literal,)*
        }
    ) => {
        $(#[$meta])*
        $vis enum $ty {
            $($(#[$doc])* $variant,)*
        }

        impl $ty {
            /// Every variant, in declaration order.
            pub const ALL: [$ty; [$($name),*].len()] = [$($ty::$variant),*];

            /// The variant's name, as stored, sent and shown.
            pub const fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)*
                }
            }

            /// The variant named `name` ([`name`](Self::name)), if any.
            pub fn parse(name: &str) -> ::core::option::Option<$ty> {
                $ty::ALL.into_iter().find(|v| v.name() == name)
            }
        }

        impl ::core::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

/// Serde for a [`named_enum!`] type, by its name: written as the name, read from a name
/// (anything else is an error naming the type). Behind core's `serde` feature.
#[cfg(feature = "serde")]
macro_rules! serde_by_name {
    ($ty:ident) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let name = <alloc::borrow::Cow<'de, str>>::deserialize(d)?;
                $ty::parse(&name).ok_or_else(|| {
                    serde::de::Error::custom(alloc::format!(
                        concat!("not a ", stringify!($ty), ": {:?}"),
                        name
                    ))
                })
            }
        }
    };
}
#[cfg(feature = "serde")]
pub(crate) use serde_by_name;

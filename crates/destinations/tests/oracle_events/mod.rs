//! Generated events for the catalog harness: Segment spec calls as Sluice stores them
//! (messageId, timestamps, receivedAt, context), weighted towards what e-commerce and
//! product teams send: the e-commerce spec's events with products, lifecycle events,
//! identifies with the reserved traits. Values are sometimes missing, mistyped (a
//! number as text, text where a number goes, null, an object), in other scripts than
//! Latin, or empty. Seeded: one seed, the same events.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

/// Inserts `key` with `value` most of the time (the value is made either way, so one
/// seed gives the same events whatever is left out).
macro_rules! put {
    ($g:expr, $o:expr, $k:expr, $v:expr $(,)?) => {{
        let v: Value = $v;
        if $g.chance(0.8) {
            $o.insert($k.into(), v);
        }
    }};
}

pub struct Generator {
    rng: StdRng,
    n: u64,
}

const ECOMMERCE: &[&str] = &[
    "Products Searched",
    "Product List Viewed",
    "Product List Filtered",
    "Product Clicked",
    "Product Viewed",
    "Product Added",
    "Product Removed",
    "Cart Viewed",
    "Checkout Started",
    "Checkout Step Viewed",
    "Checkout Step Completed",
    "Payment Info Entered",
    "Order Completed",
    "Order Updated",
    "Order Refunded",
    "Order Cancelled",
    "Coupon Applied",
    "Product Added to Wishlist",
    "Product Shared",
];

const LIFECYCLE: &[&str] = &[
    "Signed Up",
    "Signed In",
    "Signed Out",
    "Account Created",
    "Trial Started",
    "Subscription Started",
    "Subscription Cancelled",
    "Application Installed",
    "Application Opened",
    "Push Notification Received",
    "Email Opened",
    "Video Playback Started",
    "Form Submitted",
    "Feature Used",
];

/// Events with a meaning for partners' presets (Customer.io's device, person, object and
/// metrics actions).
const PARTNER_EVENTS: &[&str] = &[
    "Device Created or Updated",
    "Device Deleted",
    "Application Uninstalled",
    "User Deleted",
    "User Suppressed",
    "User Unsuppressed",
    "Relationship Deleted",
    "Object Deleted",
    "Report Delivery Event",
    "Report Content Event",
];

const NAMES: &[&str] = &[
    "Ada",
    "Zoë",
    "José",
    "Ömer",
    "Łukasz",
    "Mary-Jane",
    "李",
    "さくら",
    "Иван",
    "محمد",
    "O'Brien",
    "",
];

const WORDS: &[&str] = &[
    "Sneakers",
    "Tişört",
    "Café crème",
    "商品",
    "Смартфон",
    "🚀 Rocket",
    "Gift card",
    "a \"quoted\" name",
    "line\nbreak",
    "<b>bold</b>",
];

const CURRENCIES: &[&str] = &["USD", "EUR", "TRY", "GBP", "JPY", "usd", ""];

impl Generator {
    pub fn new(seed: u64) -> Generator {
        Generator {
            rng: StdRng::seed_from_u64(seed),
            n: 0,
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.gen_bool(p)
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.rng.gen_range(0..from.len())]
    }

    fn id(&mut self, prefix: &str) -> String {
        format!("{prefix}-{:08x}", self.rng.gen::<u32>())
    }

    /// A price-like value: usually a number, sometimes numeric text, an integer, zero,
    /// negative, text, or null.
    fn amount(&mut self) -> Value {
        let cents: i64 = self.rng.gen_range(0..500_000);
        match self.rng.gen_range(0..20) {
            0..=11 => json!(cents as f64 / 100.0),
            12 | 13 => json!(format!("{:.2}", cents as f64 / 100.0)),
            14 => json!(cents / 100),
            15 => json!(0),
            16 => json!(-(cents as f64) / 100.0),
            17 => json!("free"),
            18 => Value::Null,
            _ => json!(format!("{}", cents / 100)),
        }
    }

    fn quantity(&mut self) -> Value {
        match self.rng.gen_range(0..10) {
            0..=6 => json!(self.rng.gen_range(1..6)),
            7 => json!(self.rng.gen_range(1..6).to_string()),
            8 => json!(1.5),
            _ => Value::Null,
        }
    }

    fn text(&mut self) -> Value {
        match self.rng.gen_range(0..12) {
            0..=8 => json!(self.pick(WORDS)),
            9 => json!(""),
            10 => json!(self.rng.gen_range(0..1000)),
            _ => Value::Null,
        }
    }

    fn product(&mut self) -> Value {
        let mut p = Map::new();
        let pid = self.id("p");
        put!(self, p, "product_id", json!(pid));
        let sku = if self.chance(0.1) {
            json!(self.rng.gen_range(1000..9999))
        } else {
            json!(self.id("SKU"))
        };
        put!(self, p, "sku", sku);
        let name = self.text();
        put!(self, p, "name", name);
        let price = self.amount();
        put!(self, p, "price", price);
        let q = self.quantity();
        put!(self, p, "quantity", q);
        let category =
            json!(self.pick(&["Shoes", "Apparel/Men", "Electronics > Phones", "Gıda", ""]));
        put!(self, p, "category", category);
        let brand = self.text();
        put!(self, p, "brand", brand);
        let variant = match self.rng.gen_range(0..4) {
            0 => json!("red"),
            1 => json!(self.rng.gen_range(1..100)),
            2 => json!("42"),
            _ => Value::Null,
        };
        put!(self, p, "variant", variant);
        // Mostly plain URLs; some with a character outside ASCII (not a URI as RFC 3986
        // writes one, which Segment's schema checks refuse).
        let url = if self.chance(0.7) {
            json!(format!("https://shop.example/p/{pid}?ref=mail&x=1"))
        } else {
            json!(format!("https://shop.example/p/{pid}?ref=ü&x=1"))
        };
        put!(self, p, "url", url);
        let image = json!(format!("https://cdn.example/{pid}.jpg"));
        put!(self, p, "image_url", image);
        let position = json!(self.rng.gen_range(1..20));
        put!(self, p, "position", position);
        if self.chance(0.2) {
            p.insert("coupon".into(), json!("SAVE10"));
        }
        if self.chance(0.1) {
            p.insert("nested".into(), json!({"a": {"b": [1, "two", null]}}));
        }
        Value::Object(p)
    }

    fn ecommerce(&mut self, event: &str) -> Map<String, Value> {
        let mut props = Map::new();
        let single = matches!(
            event,
            "Product Clicked"
                | "Product Viewed"
                | "Product Added"
                | "Product Removed"
                | "Product Added to Wishlist"
                | "Product Shared"
        );
        if single {
            if let Value::Object(p) = self.product() {
                props.extend(p);
            }
        } else {
            let n = self.rng.gen_range(0..5);
            let products: Vec<Value> = (0..n).map(|_| self.product()).collect();
            if self.chance(0.9) {
                props.insert("products".into(), json!(products));
            } else if self.chance(0.5) {
                props.insert("products".into(), json!("not a list"));
            }
            let order = self.id("ord");
            put!(self, props, "order_id", json!(order));
            put!(self, props, "checkout_id", json!(self.id("co")));
            for key in [
                "revenue", "total", "value", "subtotal", "shipping", "tax", "discount",
            ] {
                if self.chance(0.6) {
                    let a = self.amount();
                    props.insert(key.into(), a);
                }
            }
            let coupon = self.text();
            put!(self, props, "coupon", coupon);
            put!(self, props, "list_id", json!("hot_deals_1"));
            if self.chance(0.4) {
                props.insert(
                    "source".into(),
                    json!(self.pick(&["web", "ios", "store-17"])),
                );
            }
            if self.chance(0.3) {
                props.insert("cart_id".into(), json!(self.id("cart")));
            }
            if self.chance(0.2) {
                props.insert("reason".into(), json!("changed my mind"));
            }
            if self.chance(0.2) {
                props.insert(
                    "discount_items".into(),
                    json!([{"code": "SAVE10", "amount": 10}, {"code": "X", "amount": "2.5"}]),
                );
            }
            put!(self, props, "query", json!("blue hotpants"));
            put!(self, props, "step", json!(self.rng.gen_range(1..4)));
        }
        let currency = json!(self.pick(CURRENCIES));
        put!(self, props, "currency", currency);
        props
    }

    fn traits(&mut self) -> Map<String, Value> {
        let mut t = Map::new();
        let first = self.pick(NAMES);
        let last = self.pick(NAMES);
        let email = match self.rng.gen_range(0..9) {
            0 => json!(format!("{}@Example.COM", self.id("U"))),
            8 => json!(format!(" {}@Example.com\t", self.id("Ü"))),
            1 => json!("not an email"),
            2 => Value::Null,
            _ => json!(format!("{}@example.com", self.id("u"))),
        };
        put!(self, t, "email", email);
        let phone = match self.rng.gen_range(0..7) {
            0 => json!("+905551234567"),
            5 => json!("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
            6 => json!("   "),
            1 => json!("(555) 123-4567"),
            2 => json!(5551234567u64),
            _ => json!("+1 415 555 0100"),
        };
        put!(self, t, "phone", phone);
        put!(self, t, "first_name", json!(first));
        put!(self, t, "last_name", json!(last));
        put!(self, t, "name", json!(format!("{first} {last}")));
        put!(self, t, "firstName", json!(first));
        put!(self, t, "lastName", json!(last));
        let age = match self.rng.gen_range(0..5) {
            0 => json!("34"),
            1 => json!(-1),
            _ => json!(self.rng.gen_range(13..90)),
        };
        put!(self, t, "age", age);
        let birthday = json!(self.pick(&[
            "1990-04-01",
            "1990-04-01T00:00:00.000Z",
            "April 1st",
            "01/04/1990"
        ]));
        put!(self, t, "birthday", birthday);
        let gender = json!(self.pick(&["female", "Male", " FEMALE ", "m", "non-binary", ""]));
        put!(self, t, "gender", gender);
        let city = json!(self.pick(&["İstanbul", "New York", "São Paulo", "東京"]));
        put!(
            self,
            t,
            "address",
            json!({"city": city, "country": self.pick(&["TR", "Turkey", "United States", "united kingdom", "Narnia"]),
                   "state": self.pick(&["California", "new york", "NY", "Bavaria", " North Carolina "]),
                   "street": "Bağdat Cd. 1", "postal_code": "34000", "postalCode": self.pick(&["34000", "SW1A 1AA", "94107"])}),
        );
        put!(self, t, "city", city);
        put!(self, t, "country", json!("Turkey"));
        put!(self, t, "created_at", json!("2025-03-01T10:00:00Z"));
        let plan = self.text();
        put!(self, t, "plan", plan);
        put!(
            self,
            t,
            "company",
            json!({"name": "Acme", "id": "c-1", "employee_count": 40})
        );
        put!(self, t, "language", json!("tr-TR"));
        if self.chance(0.3) {
            t.insert("tags".into(), json!(["vip", "beta"]));
        }
        if self.chance(0.3) {
            t.insert("lifetime_value".into(), self.amount());
        }
        if self.chance(0.2) {
            t.insert("email_optin".into(), json!(self.chance(0.5)));
        }
        // Keys written as people write them.
        if self.chance(0.3) {
            t.insert("favoriteColor".into(), json!("Mavi"));
        }
        if self.chance(0.2) {
            t.insert("Plan Type".into(), json!("Gold"));
        }
        t
    }

    fn context(&mut self, mobile: bool) -> Value {
        let mut c = Map::new();
        put!(self, c, "ip", json!("203.0.113.9"));
        put!(
            self,
            c,
            "locale",
            json!(self.pick(&["en-US", "tr-TR", "pt_BR", ""]))
        );
        put!(self, c, "timezone", json!("Europe/Istanbul"));
        put!(self, c, "userAgent", json!(self.pick(USER_AGENTS)),);
        if mobile {
            let os = self.pick(&["iOS", "Android"]);
            put!(
                self,
                c,
                "device",
                json!({"id": self.id("dev"), "type": os.to_lowercase(), "model": "iPhone15,2",
                       "manufacturer": "Apple", "token": self.id("tok"), "advertisingId": self.id("ad")}),
            );
            put!(self, c, "os", json!({"name": os, "version": "17.0"}));
            put!(
                self,
                c,
                "app",
                json!({"name": "Shop", "version": "3.2.1", "build": "321"})
            );
            c.insert(
                "library".into(),
                json!({"name": "analytics-ios", "version": "4.1.8"}),
            );
        } else {
            put!(
                self,
                c,
                "page",
                json!({"path": "/cart", "referrer": "https://www.google.com/", "search": "?utm_source=x",
                       "title": "Sepet – Shop", "url": "https://shop.example/cart?utm_source=x"}),
            );
            c.insert(
                "library".into(),
                json!({"name": "analytics.js", "version": "next-1.70.0"}),
            );
        }
        if self.chance(0.3) {
            c.insert(
                "campaign".into(),
                json!({"name": "winter", "source": "newsletter", "medium": "email", "term": "boots", "content": "a"}),
            );
        }
        if self.chance(0.3) {
            c.insert(
                "location".into(),
                json!({"city": "Ankara", "country": "Turkey", "latitude": 39.93, "longitude": 32.85}),
            );
        }
        if self.chance(0.2) {
            c.insert(
                "traits".into(),
                json!({"email": "ctx@example.com", "Loyalty Tier": "Gold", "firstName": "Ada"}),
            );
        }
        Value::Object(c)
    }

    /// One event, as stored.
    pub fn event(&mut self) -> Value {
        self.n += 1;
        let ty = match self.rng.gen_range(0..100) {
            0..=49 => "track",
            50..=69 => "identify",
            70..=79 => "page",
            80..=87 => "screen",
            88..=94 => "group",
            _ => "alias",
        };
        let mut e = Map::new();
        e.insert("type".into(), json!(ty));
        e.insert(
            "messageId".into(),
            json!(format!("msg-{:06}-{:08x}", self.n, self.rng.gen::<u32>())),
        );
        let minute = self.rng.gen_range(0..60);
        let ts = format!("2026-12-07T10:{minute:02}:00.000Z");
        e.insert("timestamp".into(), json!(ts));
        e.insert("originalTimestamp".into(), json!(ts));
        e.insert("sentAt".into(), json!(ts));
        e.insert(
            "receivedAt".into(),
            json!(format!("2026-12-07T10:{minute:02}:01.000Z")),
        );
        match self.rng.gen_range(0..10) {
            0 => {}
            1 => {
                e.insert("userId".into(), json!(self.rng.gen_range(1..100000)));
            }
            _ => {
                e.insert("userId".into(), json!(self.id("user")));
            }
        }
        if self.chance(0.8) || !e.contains_key("userId") {
            e.insert("anonymousId".into(), json!(self.id("anon")));
        }
        let mobile = ty == "screen" || self.chance(0.3);
        let mut context = self.context(mobile);
        // analytics.js sends an identified user's cached traits with every event.
        if ty != "identify" && self.chance(0.5) {
            context["traits"] = Value::Object(self.traits());
        }
        e.insert("context".into(), context);
        e.insert("integrations".into(), json!({}));
        match ty {
            "track" => {
                let name = if self.chance(0.6) {
                    self.pick(ECOMMERCE).to_string()
                } else if self.chance(0.7) {
                    self.pick(LIFECYCLE).to_string()
                } else if self.chance(0.6) {
                    self.pick(PARTNER_EVENTS).to_string()
                } else {
                    self.pick(&["custom_event", "Ödeme Yapıldı", "video:play", ""])
                        .to_string()
                };
                let mut props = if ECOMMERCE.contains(&name.as_str()) {
                    self.ecommerce(&name)
                } else {
                    let mut p = Map::new();
                    let plan = self.text();
                    put!(self, p, "plan", plan);
                    let v = self.amount();
                    put!(self, p, "value", v);
                    if PARTNER_EVENTS.contains(&name.as_str()) {
                        let object = self.id("obj");
                        put!(self, p, "objectId", json!(object));
                        put!(
                            self,
                            p,
                            "object_type_id",
                            json!(self.pick(&["1", "2", "7"]))
                        );
                        put!(self, p, "deliveryId", json!(self.id("dlv")));
                        put!(
                            self,
                            p,
                            "metric",
                            json!(self.pick(&["delivered", "opened", "clicked"]))
                        );
                        put!(
                            self,
                            p,
                            "actionType",
                            json!(self.pick(&["viewed_content", "clicked_content"]))
                        );
                        put!(self, p, "recipient", json!("ada@example.com"));
                    }
                    // Dates as partners' converters look for them (ISO-8601 at any depth).
                    put!(
                        self,
                        p,
                        "expires_at",
                        json!(self.pick(&[
                            "2026-12-31T23:59:59.500Z",
                            "2027-01-15",
                            "2027-01-15T09:30+03:00",
                            "next week"
                        ]))
                    );
                    put!(
                        self,
                        p,
                        "trial",
                        json!({"ends_at": "2026-12-21T00:00:00Z", "days": 14})
                    );
                    p
                };
                if self.chance(0.3) {
                    props.insert("email".into(), json!("prop@example.com"));
                }
                if self.chance(0.2) {
                    props.insert("Payment Method".into(), json!("Kredi Kartı"));
                }
                e.insert("event".into(), json!(name));
                e.insert("properties".into(), Value::Object(props));
            }
            "identify" => {
                e.insert("traits".into(), Value::Object(self.traits()));
            }
            "page" | "screen" => {
                let name = self.pick(&["Home", "Cart", "Ürün Detayı", ""]);
                e.insert("name".into(), json!(name));
                let mut p = Map::new();
                if ty == "page" {
                    p.insert(
                        "url".into(),
                        json!("https://shop.example/cart?utm_source=x"),
                    );
                    p.insert("path".into(), json!("/cart"));
                    p.insert("title".into(), json!("Sepet – Shop"));
                    p.insert("referrer".into(), json!("https://www.google.com/"));
                }
                if self.chance(0.3) {
                    p.insert("category".into(), json!("Docs"));
                }
                e.insert("properties".into(), Value::Object(p));
            }
            "group" => {
                e.insert("groupId".into(), json!(self.id("grp")));
                e.insert(
                    "traits".into(),
                    json!({"name": "Acme Ltd.", "industry": "Retail", "employees": self.rng.gen_range(1..5000), "plan": "enterprise"}),
                );
            }
            _ => {
                e.insert("previousId".into(), json!(self.id("anon")));
            }
        }
        Value::Object(e)
    }
}

/// User agents of the browsers and apps partners tell apart (Mixpanel's and Amplitude's
/// converters read browser and version from them).
const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.71 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.61",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.0.0 Safari/537.36 OPR/105.0.0.0",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/120.0.6099.101 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/440.0.0.33.116]",
    "Mozilla/5.0 (Windows NT 10.0; WOW64; Trident/7.0; rv:11.0) like Gecko",
    "Shop/3.2.1 (iPhone; iOS 17.0; Scale/3.00)",
    "okhttp/4.12.0",
];

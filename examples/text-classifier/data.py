"""A tiny inline training set (product reviews), so the example needs no download."""

POSITIVE = [
    "I love this product, it works perfectly",
    "Absolutely fantastic, exceeded my expectations",
    "Great quality and fast delivery",
    "Works great, very happy with the purchase",
    "Excellent value, would buy again",
    "The best purchase I made this year",
    "Really good, my family loves it",
    "Superb build quality and easy to use",
    "Amazing support team, quick and helpful",
    "Fantastic, it does exactly what it says",
    "Very satisfied, great product",
    "Lovely design and works well",
]
NEGATIVE = [
    "Terrible, it broke after one day",
    "I hate this, complete waste of money",
    "Awful quality and slow delivery",
    "Does not work, very disappointed",
    "Poor value, would not buy again",
    "The worst purchase I made this year",
    "Really bad, it stopped working",
    "Cheap build quality and hard to use",
    "Horrible support team, rude and useless",
    "Broken on arrival, asked for a refund",
    "Very unhappy, bad product",
    "Ugly design and works badly",
]
